"""Where the repository, the test fixtures and the official parity fixtures are."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository."""
FIXTURES = ROOT / "tests" / "fixtures"
"""Small annotation files in each public format, and tokenizer references."""
FORMATS = FIXTURES / "formats"
PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", ROOT.parent / "shared" / "parity"))
"""The golden fixtures of the official implementation (``XSAM_PARITY_DIR``, else ``../shared/parity``)."""
