"""``python -m vgrl``: the same as the ``vgrl`` command."""

import sys

from vgrl.cli import main

sys.exit(main())
