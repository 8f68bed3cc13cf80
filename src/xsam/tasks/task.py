"""The tasks X-SAM solves and the one table of their per-task facts.

Each task has one module for its prompts (:mod:`~xsam.tasks.generic` serves ``generic`` and
``open_vocab``; then :mod:`~xsam.tasks.referring`, :mod:`~xsam.tasks.reasoning`,
:mod:`~xsam.tasks.gcg`, :mod:`~xsam.tasks.interactive`, :mod:`~xsam.tasks.visual_grounding`,
:mod:`~xsam.tasks.chat`). This module imports none of them, so it stays cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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
    def official_name(self) -> str:
        """The official code's task name (``genseg``, ``refseg``, …)."""
        return TASKS[self].official_name

    @property
    def spec(self) -> TaskSpec:
        return TASKS[self]

    @classmethod
    def _missing_(cls, value: object) -> Task:
        for task, spec in TASKS.items():
            if value == spec.official_name:
                return task
        names = ", ".join(task.value for task in cls)
        raise ValueError(f"unknown task {value!r}; valid tasks: {names} (or their official names)")


@dataclass(frozen=True)
class TaskSpec:
    """Per-task facts the model, predictor and evaluation dispatch on.

    Attributes:
        official_name: task name in the official code and fixtures.
        decode_per_seg: one decoder sample per ``<SEG>`` whose class list is the sample's phrases
            (referring, reasoning); otherwise one decoder sample per conversation whose classes are
            all of its conditions.
        generates: inference generates the answer (GCG, chat); every other benchmark is evaluated
            teacher-forced, with the answer template part of the input (REFERENCE §4).
        region_prompts: the prompt holds ``<region>`` placeholders fed by visual prompts.
        score_threshold: query-score threshold in evaluation (None where masks are not scored).
        demo_score_threshold: the same in the demo / visualisation.
        mask_threshold: sigmoid threshold binarising the selected masks (None where the
            post-processing has no such parameter).
    """

    official_name: str
    decode_per_seg: bool = False
    generates: bool = False
    region_prompts: bool = False
    score_threshold: float | None = None
    demo_score_threshold: float | None = None
    mask_threshold: float | None = None


TASKS: dict[Task, TaskSpec] = {
    Task.GENERIC: TaskSpec("genseg", score_threshold=0.0, demo_score_threshold=0.5),
    Task.OPEN_VOCAB: TaskSpec("ovseg", score_threshold=0.0, demo_score_threshold=0.5),
    Task.REFERRING: TaskSpec("refseg", decode_per_seg=True, mask_threshold=0.5),
    Task.REASONING: TaskSpec("reaseg", decode_per_seg=True, mask_threshold=0.5),
    Task.GCG: TaskSpec("gcgseg", generates=True, mask_threshold=0.5),
    Task.INTERACTIVE: TaskSpec("intseg", region_prompts=True, score_threshold=0.5, demo_score_threshold=0.5),
    Task.VGD: TaskSpec("vgdseg", region_prompts=True, score_threshold=0.0, demo_score_threshold=0.5),
    Task.CHAT: TaskSpec("imgconv", generates=True),
}
"""The dispatch table: one entry per :class:`Task`."""
