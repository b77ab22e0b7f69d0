"""`python -m tokenvault.sim --seed S ...`: the same as `tokenvault sim --seed S ...`."""

from __future__ import annotations

import sys

from tokenvault.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
