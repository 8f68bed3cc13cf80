"""The task table: one :class:`~xsam.tasks.base.TaskHandler` per task, keyed by its name.

The predictor, sample building, ``xsam eval`` and ``xsam score`` find a task's behaviour here and
nowhere else. Adding a task is one module with a handler and one row (:func:`register_task` adds a row
at run time, e.g. for a task of your own).
"""

from __future__ import annotations

from .base import TaskHandler
from .chat import CHAT
from .gcg import GCG
from .generic import GENERIC, OPEN_VOCAB
from .interactive import INTERACTIVE
from .reasoning import REASONING
from .referring import REFERRING
from .task import Task
from .templates import TemplateList
from .visual_grounding import VGD

TASKS: dict[str, TaskHandler] = {
    Task.GENERIC: GENERIC,
    Task.OPEN_VOCAB: OPEN_VOCAB,
    Task.REFERRING: REFERRING,
    Task.REASONING: REASONING,
    Task.GCG: GCG,
    Task.INTERACTIVE: INTERACTIVE,
    Task.VGD: VGD,
    Task.CHAT: CHAT,
}
"""Task name -> handler. Keys are :class:`Task` members (``str`` values) or registered names."""


def unknown_task(name: object) -> ValueError:
    """The error for a name that is neither a task nor an official task name."""
    names = ", ".join(TASKS)
    return ValueError(f"unknown task {name!r}; valid tasks: {names} (or their official names)")


def task_handler(task: str | Task | TaskHandler) -> TaskHandler:
    """The handler of ``task``: a :class:`Task`, a task name, an official name or a handler.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if isinstance(task, TaskHandler):
        return task
    if task in TASKS:
        return TASKS[task]
    for handler in TASKS.values():
        if task == handler.official_name:
            return handler
    raise unknown_task(task)


def register_task(handler: TaskHandler) -> TaskHandler:
    """Add ``handler`` to the table under ``handler.name`` (which must be new) and return it."""
    if handler.name in TASKS or any(handler.name == h.official_name for h in TASKS.values()):
        raise ValueError(f"a task named {handler.name!r} exists already")
    TASKS[handler.name] = handler
    return handler


def all_template_lists() -> tuple[TemplateList, ...]:
    """Every template list of every task, once each, in table order."""
    lists: dict[int, TemplateList] = {}
    for handler in TASKS.values():
        for template_list in handler.templates:
            lists.setdefault(id(template_list), template_list)
    return tuple(lists.values())
