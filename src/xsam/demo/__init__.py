"""``xsam demo``: the web demo of every task (Gradio). :class:`Demo` answers the page's requests;
:func:`build_demo` builds the page (it imports Gradio, the ``demo`` extra)."""

from .session import Demo, DemoError, Request, Session

__all__ = ["Demo", "DemoError", "Request", "Session", "build_demo"]


def __getattr__(name: str):
    if name == "build_demo":
        from .app import build_demo

        return build_demo
    raise AttributeError(name)
