"""Import a file that is not part of the package (a recipe stage, a script under scripts/, a fixture
generator)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from locations import ROOT

# Where a bare name is looked up, in order: the default model's recipe, then the dev scripts.
SEARCH = (ROOT / "recipes" / "default-model", ROOT / "scripts")


def find_script(name: str) -> Path:
    """``recipes/default-model/<name>.py`` if it exists, else ``scripts/<name>.py``."""
    for folder in SEARCH:
        path = folder / f"{name}.py"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {name}.py in {', '.join(str(folder) for folder in SEARCH)}")


def load_script(path: str | Path) -> ModuleType:
    """The module at ``path`` (a bare name: ``recipes/default-model/<name>.py`` or ``scripts/<name>.py``),
    registered in ``sys.modules`` so that what looks its module up (dataclasses, pickling) works."""
    path = Path(path)
    if path.suffix != ".py":
        path = find_script(str(path))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
