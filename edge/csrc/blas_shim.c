/* Interposes the three CBLAS symbols MLX's CPU backend imports (cblas_sgemm, cblas_dgemm, cblas_cgemm)
 * and forwards them to the OpenBLAS inside the scipy-openblas32 wheel, whose symbols carry a
 * `scipy_` prefix. Loaded with RTLD_GLOBAL before libmlx, these definitions win over MLX's bundled
 * reference BLAS.
 *
 * Why route M == 1 to sgemv: MLX issues every decode-time product (one token times a weight) as an
 * sgemm with M = 1, which OpenBLAS runs several times slower than the equivalent sgemv; sgemv reaches
 * the memory-bandwidth limit. */
#include <stdint.h>

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112 };

void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int,
                       float, float *, int);
void scipy_cblas_sgemv(int, int, int, int, float, const float *, int, const float *, int, float,
                       float *, int);
void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double *, int, const double *,
                       int, double, double *, int);
void scipy_cblas_cgemm(int, int, int, int, int, int, const void *, const void *, int, const void *,
                       int, const void *, void *, int);

/* Read by edge.blas to verify that MLX's calls really land here. */
volatile uint64_t edge_blas_sgemm_calls = 0;
volatile uint64_t edge_blas_sgemv_routed = 0;
volatile uint64_t edge_blas_small_m = 0;

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    edge_blas_sgemm_calls++;
    if (order == ColMajor) {
        /* C^T = op(B)^T op(A)^T: the same product in row-major with A and B swapped. */
        int t = ta; ta = tb; tb = t;
        int n = M; M = N; N = n;
        const float *p = A; A = B; B = p;
        int l = lda; lda = ldb; ldb = l;
    }
    if (M == 1) {
        /* C[1, N] = alpha * x op(B) + beta C: y = alpha * op(B)^T x + beta y. */
        int incx = (ta == NoTrans) ? 1 : lda;
        int trans = (tb == NoTrans) ? Trans : NoTrans;
        int rows = (tb == NoTrans) ? K : N, cols = (tb == NoTrans) ? N : K;
        edge_blas_sgemv_routed++;
        scipy_cblas_sgemv(RowMajor, trans, rows, cols, alpha, B, ldb, A, incx, beta, C, 1);
        return;
    }
    if (N == 1) {
        /* C[M, 1] = alpha * op(A) x + beta C, x a column of op(B). */
        int incx = (tb == NoTrans) ? ldb : 1;
        int rows = (ta == NoTrans) ? M : K, cols = (ta == NoTrans) ? K : M;
        edge_blas_sgemv_routed++;
        scipy_cblas_sgemv(RowMajor, ta, rows, cols, alpha, A, lda, B, incx, beta, C, ldc);
        return;
    }
    if (M <= 16 && ta == NoTrans && tb == Trans) {
        /* x @ W^T for a few rows (verifying drafted tokens): the same product as column-major
         * C^T = W x^T, with W as OpenBLAS's first operand; measured 1.5-2x faster for M = 2..16. */
        edge_blas_small_m++;
        scipy_cblas_sgemm(ColMajor, Trans, NoTrans, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    scipy_cblas_sgemm(RowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cblas_dgemm(int order, int ta, int tb, int M, int N, int K, double alpha, const double *A,
                 int lda, const double *B, int ldb, double beta, double *C, int ldc) {
    scipy_cblas_dgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cblas_cgemm(int order, int ta, int tb, int M, int N, int K, const void *alpha, const void *A,
                 int lda, const void *B, int ldb, const void *beta, void *C, int ldc) {
    scipy_cblas_cgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
