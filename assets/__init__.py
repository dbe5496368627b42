"""Small files edge ships: the benchmark prompt (read with importlib.resources)."""
