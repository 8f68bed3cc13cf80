"""xsam-torch: X-SAM (From Segment Anything to Any Segmentation) in plain PyTorch.

Importing ``xsam`` is cheap: the heavy modules (torch, transformers) load on first use of
``XSamModel`` or ``XSamConfig``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Prediction", "Task", "XSamConfig", "XSamModel", "XSamPredictor", "__version__", "load_tokenizer"]

if TYPE_CHECKING:
    from .config import XSamConfig
    from .inference.predictor import XSamPredictor
    from .modeling.xsam import XSamModel
    from .tasks.prediction import Prediction
    from .tasks.task import Task
    from .tokens import load_tokenizer

_LAZY = {
    "Prediction": ("xsam.tasks.prediction", "Prediction"),
    "Task": ("xsam.tasks.task", "Task"),
    "XSamConfig": ("xsam.config", "XSamConfig"),
    "XSamModel": ("xsam.modeling.xsam", "XSamModel"),
    "XSamPredictor": ("xsam.inference.predictor", "XSamPredictor"),
    "load_tokenizer": ("xsam.tokens", "load_tokenizer"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'xsam' has no attribute {name!r}")
