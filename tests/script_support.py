"""Import a file that is not part of the package (a script under scripts/, a fixture generator)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(path: str | Path) -> ModuleType:
    """The module at ``path`` (a bare name: ``scripts/<name>.py``), registered in ``sys.modules`` so
    that what looks its module up (dataclasses, pickling) works."""
    path = Path(path)
    if path.suffix != ".py":
        path = SCRIPTS / f"{path}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
