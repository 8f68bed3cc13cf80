"""The tasks X-SAM solves, by name. Cheap to import: the task table itself is
:data:`xsam.tasks.registry.TASKS`, loaded on first use."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import TaskHandler


class Task(str, Enum):
    """A task name; ``Task("referring")`` and the official name ``Task("refseg")`` both work."""

    GENERIC = "generic"
    OPEN_VOCAB = "open_vocab"
    REFERRING = "referring"
    REASONING = "reasoning"
    GCG = "gcg"
    INTERACTIVE = "interactive"
    VGD = "vgd"
    CHAT = "chat"

    @property
    def handler(self) -> TaskHandler:
        """The task's row of the task table."""
        from .registry import TASKS

        return TASKS[self]

    @property
    def official_name(self) -> str:
        """The official code's task name (``genseg``, ``refseg``, …)."""
        return self.handler.official_name

    @classmethod
    def _missing_(cls, value: object) -> Task:
        from .registry import TASKS, unknown_task

        for task in cls:
            if value == TASKS[task].official_name:
                return task
        raise unknown_task(value)
