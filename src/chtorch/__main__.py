"""``python -m chtorch``: the ``chtorch`` command (see :mod:`chtorch.cli`)."""

import sys

from chtorch.cli import main

if __name__ == "__main__":
    sys.exit(main())
