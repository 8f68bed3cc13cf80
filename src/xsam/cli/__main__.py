"""``python -m xsam.cli`` (what ``accelerate launch -m xsam.cli`` runs)."""

import sys

from . import main

sys.exit(main())
