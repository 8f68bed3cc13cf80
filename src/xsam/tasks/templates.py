"""Prompt templates of every task, as data, plus the small text helpers all prompt builders share.

Each list is a :class:`TemplateList`. The builders pick a template by **index into our list**:
inference uses a fixed index (default 0, the first template of the official list in every case,
so the default prompt is an official one), training draws an index with :meth:`TemplateList.draw`
and a caller-owned ``random.Random``. The official code draws uniformly at random in training *and*
evaluation (REFERENCE §2, issue #37); a deterministic default removes that source of variance.

**Custom templates.** Wherever a builder takes ``question_template`` or ``answer_template``, a
``str`` may be given instead of an index: it is used as the template itself, for users who want
their own prompt wording (or an official template missing from a partial list below). Templates
are :meth:`str.format` strings (write a literal brace as ``{{`` or ``}}``). :meth:`TemplateList.get`
accepts a custom template only when it has exactly the placeholders of the list's templates, each
once, as plain ``{name}`` fields (e.g. ``"Segment {categories}, please."`` for
:data:`GENERIC_QUESTIONS`; none for :data:`GCG_QUESTIONS` and the answers), and contains the
special tokens ``<SEG>``, ``<p>``, ``</p>`` and ``<region>`` exactly as often as the listed ones
(an answer needs its one ``<SEG>``; a question must not add condition phrases or regions of its
own, which would shift the class order). Anything else raises ``ValueError`` naming what is
expected. A custom template changes the text the model sees: the released weights were trained on
the official wording only.

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
``{regions}`` (visual grounding, interactive); the GCG questions and every answer have none. Every
answer ends with the ``<SEG>`` token and the chat template appends ``<|end|>`` (see
:mod:`xsam.tasks.conversation`).
"""

from __future__ import annotations

import operator
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

IMAGE = "<image>"
REGION = "<region>"
SEG = "<SEG>"
PHRASE_START = "<p>"
PHRASE_END = "</p>"

TemplateChoice = int | str
"""What a builder's ``question_template`` / ``answer_template`` takes: an index or a custom template."""

_SPECIAL_TOKENS = (SEG, PHRASE_START, PHRASE_END, REGION)
"""Tokens that a custom template must contain as often as the listed templates do."""


def template_fields(template: str) -> tuple[str, ...]:
    """The ``{placeholders}`` of a :meth:`str.format` template, sorted, each as often as it occurs.

    Raises ValueError on malformed braces and on fields that are not a plain ``{name}`` (positional
    ``{}``, ``{0}``, attribute or index access, a conversion or a format spec).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(
            f"malformed template {template!r}: {error} (write literal braces as {{{{ }}}})"
        ) from None
    fields = []
    for _, field, format_spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or format_spec or conversion:
            raise ValueError(
                f"template {template!r}: placeholders must be plain {{name}} fields, got a field {field!r}"
            )
        fields.append(field)
    return tuple(sorted(fields))


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

    @property
    def fields(self) -> tuple[str, ...]:
        """The placeholders every template of the list has (see :func:`template_fields`)."""
        return template_fields(self.templates[0])

    def get(self, choice: TemplateChoice) -> str:
        """The template at index ``choice`` (0-based, no negative indices), or ``choice`` itself when
        it is a string: a custom template, checked against the list (see the module docstring).

        IndexError names the valid range, ValueError the expected placeholders or special tokens,
        TypeError reports a choice that is neither an index nor a string.
        """
        if isinstance(choice, str):
            return self._check_custom(choice)
        if isinstance(choice, bool):
            raise TypeError(f"{self.name}: template choice must be an index or a template string, not a bool")
        try:
            index = operator.index(choice)
        except TypeError:
            raise TypeError(
                f"{self.name}: template choice must be an index or a template string, "
                f"got {type(choice).__name__}"
            ) from None
        if not 0 <= index < len(self.templates):
            raise IndexError(
                f"{self.name}: template index {index} out of range (0..{len(self.templates) - 1})"
            )
        return self.templates[index]

    def render(self, choice: TemplateChoice, **fields: str) -> str:
        """:meth:`get` the template and fill in its placeholders (``str.format``)."""
        return self.get(choice).format(**fields)

    def _check_custom(self, template: str) -> str:
        if not template.strip():
            raise ValueError(f"{self.name}: a custom template must not be empty")
        expected = self.fields
        if expected:
            shown = (
                "exactly the placeholders " + ", ".join(f"{{{field}}}" for field in expected) + ", each once"
            )
        else:
            shown = "no placeholders"
        try:
            found = template_fields(template)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}; a custom template needs {shown}") from None
        if found != expected:
            found_shown = ", ".join(f"{{{field}}}" for field in found) or "none"
            raise ValueError(
                f"{self.name}: custom template {template!r} must have {shown} (found {found_shown})"
            )
        for token in _SPECIAL_TOKENS:
            want, got = self.templates[0].count(token), template.count(token)
            if got != want:
                raise ValueError(
                    f"{self.name}: custom template {template!r} must contain {token!r} exactly {want} "
                    f"time(s), found {got}"
                )
        return template

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


def per_turn(
    choice: TemplateChoice | Sequence[TemplateChoice] | None, count: int, name: str
) -> list[TemplateChoice | None]:
    """Expand a template choice to one entry per turn: an index, a template string or None repeats,
    a sequence (one choice per turn) must match the number of turns."""
    if choice is None or isinstance(choice, (int, str)):
        return [choice] * count
    choices = list(choice)
    if len(choices) != count:
        raise ValueError(f"{name}: got {len(choices)} template choices for {count} turns")
    return choices


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
