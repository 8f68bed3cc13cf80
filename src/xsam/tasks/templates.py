"""Prompt templates as data (:class:`TemplateList`) and the small text helpers every task's prompt
builder shares. Each task module holds its own lists (``generic.QUESTIONS``, ``referring.ANSWERS``...).

The builders pick a template by **index into our list**: inference uses a fixed index (default 0,
the first template of the official list in every case, so the default prompt is an official one),
training draws an index with :meth:`TemplateList.draw`
and a caller-owned ``random.Random``. The official code draws uniformly at random in training *and*
evaluation; a deterministic default removes that source of variance.

**Custom templates.** Wherever a builder takes ``question_template`` or ``answer_template``, a
``str`` may be given instead of an index: it is used as the template itself, for users who want
their own prompt wording (or an official template missing from a partial list below). Templates
are :meth:`str.format` strings (write a literal brace as ``{{`` or ``}}``). :meth:`TemplateList.get`
accepts a custom template only when it has exactly the placeholders of the list's templates, each
once, as plain ``{name}`` fields (e.g. ``"Segment {categories}, please."`` for
the generic questions; none for the GCG questions and the answers), and contains the
special tokens ``<SEG>``, ``<p>``, ``</p>`` and ``<region>`` exactly as often as the listed ones
(an answer needs its one ``<SEG>``; a question must not add condition phrases or regions of its
own, which would shift the class order). Anything else raises ``ValueError`` naming what is
expected. A custom template changes the text the model sees: the released weights were trained on
the official wording only.

**Partial lists.** For some official lists only a few entries are known verbatim (from the official
configuration and the entries the golden parity fixtures realise); nothing is made up.
``official_size`` records the official length, :attr:`TemplateList.complete` tells the two apart.
Partial lists (ours / official): generic questions 3 / 6, referring questions 7 / 10, reasoning short
and explanatory questions 1 / 5 each, GCG questions 2 / 6, visual-grounding questions 4 / 6. Every
answer list and the reasoning long questions are complete. Because partial lists skip official
entries, an index beyond the leading run of a partial list is *our* position, not the official one
(index 0 is the official index 0 everywhere).

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

from ..tokens import IMAGE, PHRASE_END, PHRASE_START, REGION, SEG

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
