"""`python -m edge` runs the `edge` command."""

import sys

from .cli import main

sys.exit(main())
