"""Generic segmentation prompts (COCO panoptic / instance / semantic); open-vocabulary uses them too.

The prompt lists the categories to segment as condition phrases, ``<p>a</p>, <p>b</p>, …``; the
class index of a category is its position in that list. One ``<SEG>`` in the answer drives the
decoder. Users name categories with the demo syntax ``"ins: person, car; sem: sky, road"``
(:func:`parse_category_prompt`), which also decides the post-processing (panoptic, instance or
semantic).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from .conversation import Turn
from .templates import GENERIC_ANSWERS, GENERIC_QUESTIONS, TemplateChoice, place_image, wrap_phrase

# Removed in this order, anywhere in the name, before "-" becomes a space (COCO "wall-other-merged"
# -> "wall", "door-stuff" -> "door").
_REMOVED_PARTS = ("-merged", "-other", "-stuff")
_SECTION_KEYS = ("ins", "sem")  # thing classes, stuff classes
_SYNTAX_HINT = "expected e.g. 'ins: person, car; sem: sky, road'"


class SegmentationKind(str, Enum):
    """Which post-processing a category prompt asks for."""

    PANOPTIC = "panoptic"
    INSTANCE = "instance"
    SEMANTIC = "semantic"


@dataclass(frozen=True)
class CategorySpec:
    """The categories of one generic-segmentation request, in prompt order.

    ``is_thing[i]`` says whether ``names[i]`` is a thing (instance) class or a stuff class; stuff
    segments of one class are merged by panoptic post-processing.
    """

    names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    kind: SegmentationKind

    @classmethod
    def from_names(cls, *, things: Sequence[str] = (), stuff: Sequence[str] = ()) -> CategorySpec:
        """Things first, then stuff. Names are kept verbatim, so they may contain commas
        (ADE20K's ``"road, route"``). Both given -> panoptic, only things -> instance, only stuff ->
        semantic.
        """
        things, stuff = tuple(things), tuple(stuff)
        names = things + stuff
        if not names:
            raise ValueError(f"no category names given; {_SYNTAX_HINT}")
        if any(not name.strip() for name in names):
            raise ValueError("category names must not be empty")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"category names given more than once: {duplicates}")
        if things and stuff:
            kind = SegmentationKind.PANOPTIC
        else:
            kind = SegmentationKind.INSTANCE if things else SegmentationKind.SEMANTIC
        return cls(names, (True,) * len(things) + (False,) * len(stuff), kind)

    def shuffled(self, rng: random.Random) -> CategorySpec:
        """The same categories in a random order (the official demo shuffles before prompting)."""
        order = list(range(len(self.names)))
        rng.shuffle(order)
        return replace(
            self,
            names=tuple(self.names[i] for i in order),
            is_thing=tuple(self.is_thing[i] for i in order),
        )


def clean_category_name(name: str) -> str:
    """Official category-name cleaning: drop ``-merged``, ``-other``, ``-stuff`` (in that order,
    anywhere in the name), turn the remaining ``-`` into spaces, lower-case. Whitespace is kept.
    """
    for part in _REMOVED_PARTS:
        name = name.replace(part, "")
    return name.replace("-", " ").lower()


def format_categories(names: Sequence[str]) -> str:
    """``["wall-other-merged", "Person"]`` -> ``"<p>wall</p>, <p>person</p>"`` (names cleaned)."""
    return ", ".join(wrap_phrase(clean_category_name(name)) for name in names)


def _split_names(text: str) -> list[str]:
    """Comma-separated names; a name holding a comma is written in double quotes (CSV rules)."""
    fields = next(csv.reader([text], skipinitialspace=True), [])
    return [name.strip() for name in fields if name.strip()]


def parse_category_prompt(prompt: str) -> CategorySpec:
    """Parse the demo syntax ``"ins: a, b; sem: c"`` into a :class:`CategorySpec`.

    Sections are separated by ``;`` and start with ``ins:`` (thing classes) or ``sem:`` (stuff
    classes), each at most once, in any order; names are separated by commas. A name that contains
    a comma (ADE20K-150 has ``"road, route"``) is double-quoted: ``'sem: "road, route", sky'``, or
    build the spec with :meth:`CategorySpec.from_names` from lists. Raises ValueError on a section
    without a known prefix, a repeated or empty section, or no names at all.
    """
    sections: dict[str, list[str]] = {}
    for section in prompt.split(";"):
        if not section.strip():
            continue
        key, colon, body = section.partition(":")
        key = key.strip().lower()
        if not colon or key not in _SECTION_KEYS:
            raise ValueError(
                f"category prompt section {section.strip()!r} must start with 'ins:' or 'sem:'; "
                f"{_SYNTAX_HINT}"
            )
        if key in sections:
            raise ValueError(f"'{key}:' appears more than once in {prompt!r}")
        names = _split_names(body)
        if not names:
            raise ValueError(f"'{key}:' lists no category names in {prompt!r}")
        sections[key] = names
    if not sections:
        raise ValueError(f"empty category prompt; {_SYNTAX_HINT}")
    return CategorySpec.from_names(things=sections.get("ins", ()), stuff=sections.get("sem", ()))


def build_prompt(
    categories: Sequence[str],
    *,
    question_template: TemplateChoice = 0,
    answer_template: TemplateChoice | None = 0,
) -> list[Turn]:
    """One turn asking to segment ``categories`` (raw names, cleaned here), in the given order.

    ``question_template`` indexes :data:`~xsam.tasks.templates.GENERIC_QUESTIONS` or is a custom
    template with one ``{categories}`` placeholder (e.g. ``"Find {categories} in the picture."``).
    ``answer_template`` indexes :data:`~xsam.tasks.templates.GENERIC_ANSWERS` or is a custom answer
    with one ``<SEG>`` (teacher-forced evaluation and training put the answer in the input); None
    leaves the answer to generation. Custom templates are checked as described in
    :mod:`xsam.tasks.templates`.
    """
    if isinstance(categories, str):
        raise TypeError("categories must be a sequence of names, not one string")
    if not categories:
        raise ValueError("generic segmentation needs at least one category")
    question = GENERIC_QUESTIONS.render(question_template, categories=format_categories(categories))
    answer = None if answer_template is None else GENERIC_ANSWERS.render(answer_template)
    return [Turn(place_image(question), answer)]


def sample_prompt(categories: Sequence[str], rng: random.Random) -> list[Turn]:
    """Training prompt: question and answer templates drawn with ``rng``."""
    return build_prompt(
        categories,
        question_template=GENERIC_QUESTIONS.draw(rng),
        answer_template=GENERIC_ANSWERS.draw(rng),
    )
