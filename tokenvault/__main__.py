"""`python -m tokenvault`: the same command line as the `tokenvault` console script."""

from __future__ import annotations

import sys

from tokenvault.entry import main

if __name__ == "__main__":
    sys.exit(main())
