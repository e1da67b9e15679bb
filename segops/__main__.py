"""`python -m segops` is the same program as the `segops` command."""

import sys

from ._cli import main

sys.exit(main())
