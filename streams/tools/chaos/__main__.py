"""``python -m streams.tools.chaos``: the same as ``feedrank chaos``."""

import sys

from streams.tools.chaos.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
