"""Prompt templates of every task, as data, plus the small text helpers all prompt builders share.

Each list is a :class:`TemplateList`. The builders pick a template by **index into our list**:
inference uses a fixed index (default 0, the first template of the official list in every case,
so the default prompt is an official one), training draws an index with :meth:`TemplateList.draw`
and a caller-owned ``random.Random``. The official code draws uniformly at random in training *and*
evaluation (REFERENCE §2, issue #37); a deterministic default removes that source of variance.

**Partial lists.** The REFERENCE (§2) spells out most official lists verbatim, but for some it only
quotes a few entries ("+3 near-duplicates", "(+4 similar)", "…"). Only the entries it gives in full,
plus entries realised verbatim by the golden fixtures (``shared/parity``), are listed here; nothing
is made up. ``official_size`` records the official length, :attr:`TemplateList.complete` tells the
two apart. Partial lists (ours / official):

* :data:`GENERIC_QUESTIONS` 3 / 6 (the REFERENCE elides four; ``train_genseg`` realises one of them),
* :data:`REFERRING_QUESTIONS` 7 / 10,
* :data:`REASONING_SHORT_QUESTIONS` 1 / 5,
* :data:`REASONING_EXPLANATORY_QUESTIONS` 1 / 5,
* :data:`GCG_QUESTIONS` 2 / 6,
* :data:`VISUAL_GROUNDING_QUESTIONS` 4 / 6 (two from the REFERENCE, two realised by the ``intseg``
  and ``vgdseg`` fixtures).

Every answer list and :data:`REASONING_LONG_QUESTIONS` are complete. Because partial lists skip
official entries, an index beyond the leading run of a partial list is *our* position, not the
official one (index 0 is the official index 0 everywhere).

Placeholders: ``{categories}`` (generic), ``{expression}`` (referring), ``{query}`` (reasoning),
``{regions}`` (visual grounding, interactive). Every answer ends with the ``<SEG>`` token and the
chat template appends ``<|end|>`` (see :mod:`xsam.tasks.conversation`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

IMAGE = "<image>"
REGION = "<region>"
SEG = "<SEG>"
PHRASE_START = "<p>"
PHRASE_END = "</p>"


@dataclass(frozen=True)
class TemplateList:
    """An ordered list of templates of one kind (the questions of a task, or its answers)."""

    name: str
    templates: tuple[str, ...]
    official_size: int

    def __len__(self) -> int:
        return len(self.templates)

    @property
    def complete(self) -> bool:
        """True when every official template is listed."""
        return len(self.templates) == self.official_size

    def get(self, index: int) -> str:
        """The template at ``index`` (0-based, no negative indices); IndexError names the valid range."""
        if not 0 <= index < len(self.templates):
            raise IndexError(
                f"{self.name}: template index {index} out of range (0..{len(self.templates) - 1})"
            )
        return self.templates[index]

    def draw(self, rng: random.Random) -> int:
        """A uniformly drawn index, for training."""
        return rng.randrange(len(self.templates))


def wrap_phrase(text: str) -> str:
    """``text`` as a condition phrase: ``<p>text</p>`` (its hidden states become a class embedding)."""
    return f"{PHRASE_START}{text}{PHRASE_END}"


def place_image(question: str) -> str:
    """Move the ``<image>`` placeholder to the start of ``question``, followed by a newline.

    Same rule as the official map functions: remove every ``<image>``, strip, prepend ``<image>\\n``
    and strip the result (so an otherwise empty question becomes just ``<image>``).
    """
    body = question.replace(IMAGE, "").strip()
    return f"{IMAGE}\n{body}".strip()


def per_turn(choice: int | Sequence[int] | None, count: int, name: str) -> list[int | None]:
    """Expand a template choice to one entry per turn: an int or None repeats, a sequence must match."""
    if choice is None or isinstance(choice, int):
        return [choice] * count
    if len(choice) != count:
        raise ValueError(f"{name}: got {len(choice)} template indices for {count} turns")
    return list(choice)


# ------------------------------------------------------------------------------ generic / open-vocab
GENERIC_QUESTIONS = TemplateList(
    "generic questions",
    (
        "Can you segment the image based on the following categories: {categories}? "
        "Please output the segmentation masks.",
        "Can you generate segmentation masks for this image based on the specified categories: "
        "{categories}? Please generate the segmentation masks.",
        # Elided in the REFERENCE; this is the text the train_genseg fixture realises.
        "Could you output segmentation masks for this image that highlight the following categories: "
        "{categories}? Please output the segmentation masks.",
    ),
    official_size=6,
)

GENERIC_ANSWERS = TemplateList(
    "generic answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"Sure, {SEG}.",
        f"Sure, it is {SEG}.",
        f"Sure, the segmentation result is {SEG}.",
    ),
    official_size=5,
)

# ------------------------------------------------------------------------------------------ referring
REFERRING_QUESTIONS = TemplateList(
    "referring questions",
    (
        "Please identify and segment the {expression} in this image.",
        "Please segment {expression} in this image.",
        "What is {expression} in this image? Please output the corresponding segmentation mask.",
        "Can you segment {expression} in this image? Please generate the segmentation mask.",
        "Could you provide a segmentation mask for the {expression} in this image? "
        "Please provide the segmentation mask.",
        "Where is the {expression} in this picture? Please output the segmentation masks.",
        "Can you highlight the {expression} in this image with a segmentation mask? "
        "Please output the segmentation mask.",
    ),
    official_size=10,
)

REFERRING_ANSWERS = TemplateList(
    "referring answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"Sure, {SEG}.",
        f"Sure, it is {SEG}.",
        f"Sure, the segmentation mask is {SEG}.",
    ),
    official_size=5,
)

# ------------------------------------------------------------------------------------------ reasoning
REASONING_LONG_QUESTIONS = TemplateList(
    "reasoning long questions",
    (
        "{query} Please output the corresponding segmentation mask.",
        "{query} Please generate a segmentation mask for this image.",
        "{query} Please extract the segmentation mask.",
        "{query} Please return the segmentation predictions as masks.",
        "{query} Please segment the image.",
    ),
    official_size=5,
)

REASONING_SHORT_QUESTIONS = TemplateList(
    "reasoning short questions",
    ("Can you segment {query} in this image? Please output the segmentation mask.",),
    official_size=5,
)

REASONING_EXPLANATORY_QUESTIONS = TemplateList(
    "reasoning explanatory questions",
    ("{query} Please explain why and output the corresponding segmentation mask.",),
    official_size=5,
)

# The REFERENCE gives no separate plain-answer list for reasoning; the referring answers are used
# (the reaseg fixture's "It is <SEG>." is among them).
REASONING_ANSWERS = TemplateList("reasoning answers", REFERRING_ANSWERS.templates, official_size=5)

# Appended to the explanation with one space: "{explanation} {answer}".
REASONING_EXPLANATORY_ANSWERS = TemplateList(
    "reasoning explanatory answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"And {SEG}.",
        f"And it is {SEG}.",
        f"And the segmentation mask is {SEG}.",
    ),
    official_size=5,
)

# ------------------------------------------------------------------------ grounded conversation (GCG)
GCG_QUESTIONS = TemplateList(
    "gcg questions",
    (
        "Could you please give me a brief description of the image? Please respond with interleaved "
        "segmentation masks for the corresponding parts of the answer.",
        "Can you provide a brief description of the this image? Please output interleaved "
        "segmentation masks for the corresponding phrases.",
    ),
    official_size=6,
)

# Appended to the tagged caption with one space; one <SEG> for all phrases.
GCG_ANSWERS = TemplateList(
    "gcg answers",
    (
        f"{SEG}.",
        f"And {SEG}.",
        f"The segmentation mask is {SEG}.",
        f"And the segmentation mask is {SEG}.",
    ),
    official_size=4,
)

# ------------------------------------------------------------------- visual grounding / interactive
VISUAL_GROUNDING_QUESTIONS = TemplateList(
    "visual grounding questions",
    (
        "Can you segment the image based on the following regions: {regions}? "
        "Please output the corresponding segmentation mask.",
        "Can you generate segmentation masks for this image based on the specified regions: "
        "{regions}? Please generate the segmentation masks.",
        # Elided in the REFERENCE; realised by the intseg and vgdseg fixtures respectively.
        "Can you provide segmentation masks for this image based on these regions: {regions}? "
        "Please provide the segmentation masks.",
        "Could you create segmentation masks for this image according to the specified regions: "
        "{regions}? Please create the segmentation masks.",
    ),
    official_size=6,
)

VISUAL_GROUNDING_ANSWERS = TemplateList(
    "visual grounding answers", GENERIC_ANSWERS.templates, official_size=5
)

ALL_TEMPLATE_LISTS: tuple[TemplateList, ...] = (
    GENERIC_QUESTIONS,
    GENERIC_ANSWERS,
    REFERRING_QUESTIONS,
    REFERRING_ANSWERS,
    REASONING_LONG_QUESTIONS,
    REASONING_SHORT_QUESTIONS,
    REASONING_EXPLANATORY_QUESTIONS,
    REASONING_ANSWERS,
    REASONING_EXPLANATORY_ANSWERS,
    GCG_QUESTIONS,
    GCG_ANSWERS,
    VISUAL_GROUNDING_QUESTIONS,
    VISUAL_GROUNDING_ANSWERS,
)
"""Every list above, for tests and documentation tools."""
