"""``python -m einstruct`` runs the command line."""

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":  # not when a spawned worker process imports this module
    sys.exit(main())
