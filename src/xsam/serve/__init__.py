"""``xsam serve``: one HTTP service for agents, scripts and annotation tools, on top of the predictor.

:func:`create_app` builds the FastAPI application around an :class:`XSamService` (the model behind
one worker thread, a byte-bounded cache of image encodings); it speaks the native API (``/v1``), the
X-AnyLabeling remote-server protocol (``/x-anylabeling``) and the Label Studio ML backend protocol
(``/label-studio``). Install with ``pip install "xsam-torch[serve]"``.
"""

from .app import create_app
from .service import ServeSettings, XSamService

__all__ = ["ServeSettings", "XSamService", "create_app"]
