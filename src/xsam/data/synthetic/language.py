"""The words of the synthetic world: referring expressions, reasoning queries, grounded captions and
question-answer conversations, all derived from a :class:`~xsam.data.synthetic.scene.Scene`.

Positions compare mask centroids ``(x, y)`` (``x`` right, ``y`` down). A spatial relation is only
stated with a margin of :data:`RELATION_MARGIN` of the image side, so a reader comparing plain
centroids resolves every expression the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .geometry import has_holes
from .scene import Scene, Thing

RELATION_MARGIN = 0.05
"""A relation holds for the target when its centroid is this share of the side beyond the landmark's,
and is denied for a look-alike only when the look-alike is this far on the other side."""

RELATIONS: dict[str, tuple[str, str]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
"""Relation -> its two wordings (the referring sentence variants use both)."""

THING_FACTS: dict[str, tuple[str, ...]] = {
    "circle": ("could roll", "has no corners", "is perfectly round"),
    "square": ("has four equal sides", "has four right angles", "looks like a floor tile"),
    "triangle": ("has three corners", "has exactly three sides", "looks like a warning sign"),
    "star": ("has five points", "has five pointed arms", "is put on top of a christmas tree"),
    "hexagon": ("has six corners", "has six equal sides", "looks like a honeycomb cell"),
    "cross": (
        "looks like a plus sign",
        "has four arms of equal length",
        "looks like the sign on a first-aid kit",
    ),
}
"""Facts that single out one shape, each a verb phrase ("the shape that ...")."""

STUFF_FACTS: dict[str, tuple[str, ...]] = {
    "sky": ("clouds float in", "birds fly through"),
    "grass": ("cows would graze on", "a lawn is made of"),
    "water": ("a fish would live in", "you could swim in"),
    "sand": ("you could build a sandcastle with", "a beach is covered with"),
    "wall": ("is built from bricks", "you could hang a painting on"),
}
"""Facts that single out one stuff class, each completing "the region that ..."."""

_PLURAL_VERBS = {"has": "have", "is": "are", "looks": "look"}
_PLURALS = {"cross": "crosses"}
_NUMBERS = ("no", "one", "two", "three", "four", "five")
_PHRASE_NOUNS = {True: ("shape", "object"), False: ("region", "area")}
_SENTENCE_TEMPLATES = (
    "Please point out the {noun} in this picture that {fact}.",
    "In this image, where is the {noun} that {fact}?",
    "Can you segment the {noun} that {fact} in this image?",
)
_THING_QUESTION = "Which object in this picture {fact}?"
_LOWER_PREPOSITIONS = {"grass": "on", "water": "on", "sand": "on"}
_UPPER_PREPOSITIONS = {"sky": "under", "wall": "in front of"}
_BACKGROUND_WORDS = {
    "sky": "the sky",
    "wall": "a brick wall",
    "grass": "grass",
    "water": "water",
    "sand": "sand",
}
_ALONE_PREPOSITIONS = {"sky": "against", "wall": "in front of", "grass": "on", "water": "on", "sand": "on"}


def plural(shape: str) -> str:
    return _PLURALS.get(shape, f"{shape}s")


def _article(words: str) -> str:
    return f"an {words}" if words[0] in "aeiou" else f"a {words}"


# --- referring expressions -----------------------------------------------------------------------


def describe(thing: Thing, level: int) -> str:
    """The words for ``thing`` at ``level``: 0 shape, 1 colour shape, 2 size colour shape."""
    return " ".join([thing.size, thing.colour, thing.shape][2 - level :])


def _same_at(first: Thing, second: Thing, level: int) -> bool:
    return describe(first, level) == describe(second, level)


def unique_level(things: Sequence[Thing], index: int) -> int | None:
    """The lowest description level that fits ``things[index]`` alone, or None."""
    for level in range(3):
        if sum(_same_at(thing, things[index], level) for thing in things) == 1:
            return level
    return None


def relation_holds(target: Thing, landmark: Thing, relation: str, margin: float) -> bool:
    """Whether ``target``'s centroid lies more than ``margin`` px in ``relation`` of ``landmark``'s
    (a negative margin loosens the test)."""
    (target_x, target_y), (landmark_x, landmark_y) = target.centroid, landmark.centroid
    offset = {
        "left": landmark_x - target_x,
        "right": target_x - landmark_x,
        "above": landmark_y - target_y,
        "below": target_y - landmark_y,
    }[relation]
    return offset > margin


def referring_sentences(things: Sequence[Thing], index: int, side: int) -> list[str]:
    """Two or three wordings of the shortest expression that singles out ``things[index]``: its own
    description when unique, else a description plus a relation to a uniquely described landmark (the
    look-alikes clearly on the other side). Empty when no such expression exists."""
    level = unique_level(things, index)
    target = things[index]
    if level is not None:
        words = describe(target, level)
        return [f"the {words}", words, f"the {words} in the picture"]
    margin = RELATION_MARGIN * side
    for level in range(3):
        look_alikes = [i for i, thing in enumerate(things) if i != index and _same_at(thing, target, level)]
        for relation, wordings in RELATIONS.items():
            for landmark_index, landmark in enumerate(things):
                landmark_level = unique_level(things, landmark_index)
                if landmark_index == index or landmark_level is None or landmark_index in look_alikes:
                    continue
                if relation_holds(target, landmark, relation, margin) and not any(
                    relation_holds(things[other], landmark, relation, -margin) for other in look_alikes
                ):
                    words, landmark_words = describe(target, level), describe(landmark, landmark_level)
                    return [
                        f"the {words} {wordings[0]} the {landmark_words}",
                        f"{words} {wordings[1]} the {landmark_words}",
                    ]
    return []


# --- reasoning queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReasoningQuery:
    """Queries that describe one category of a scene by a fact, never by its name.

    Attributes:
        category: the target's class name (a shape or a stuff class).
        is_thing: whether the target is a shape (all its instances) or a stuff region.
        queries: two or three phrases or sentences, all about the target.
        is_sentence: long questions (True) or short phrases (False).
        explanation: one sentence saying why the target answers the queries.
    """

    category: str
    is_thing: bool
    queries: tuple[str, ...]
    is_sentence: bool
    explanation: str


def reasoning_query(rng: np.random.Generator, scene: Scene) -> ReasoningQuery:
    """Pick a target category present in ``scene`` (a stuff region only when it has no hole, since a
    polygon cannot carry one) and word two or three queries about it."""
    shapes = sorted({thing.shape for thing in scene.things})
    regions = [region.name for region in scene.stuff if not has_holes(region.mask)]
    is_thing = not regions or rng.random() >= 0.25
    category = (
        shapes[int(rng.integers(len(shapes)))] if is_thing else regions[int(rng.integers(len(regions)))]
    )
    facts = THING_FACTS[category] if is_thing else STUFF_FACTS[category]
    is_sentence = bool(rng.random() < 0.5)
    count = min(len(facts), int(rng.integers(2, 4)))
    chosen = [facts[int(i)] for i in rng.permutation(len(facts))[:count]]
    nouns = _PHRASE_NOUNS[is_thing]
    queries = []
    for number, fact in enumerate(chosen):
        noun = nouns[number % 2]
        if not is_sentence:
            queries.append(f"the {noun} that {fact}")
        elif is_thing and number == 0:
            queries.append(_THING_QUESTION.format(fact=fact))
        else:
            template = _SENTENCE_TEMPLATES[int(rng.integers(len(_SENTENCE_TEMPLATES)))]
            queries.append(template.format(noun=noun, fact=fact))
    return ReasoningQuery(
        category, is_thing, tuple(queries), is_sentence, _explanation(scene, category, is_thing, chosen[0])
    )


def _explanation(scene: Scene, category: str, is_thing: bool, fact: str) -> str:
    if not is_thing:
        return f"The {category} is the region that {fact}, so it is the answer."
    count = sum(thing.shape == category for thing in scene.things)
    if count == 1:
        return f"Of all the shapes in the picture, only the {category} {fact}."
    verb, _, rest = fact.partition(" ")  # "has three corners" -> "have three corners"
    verb = _PLURAL_VERBS.get(verb, verb)
    return f"Of all the shapes in the picture, only the {plural(category)} {verb} {rest}."


# --- grounded captions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundedPhrase:
    """A span ``[start, end)`` of a caption and what it names: shape instances (indices into
    ``scene.things``) or one stuff class."""

    start: int
    end: int
    things: tuple[int, ...] = ()
    stuff: str | None = None


@dataclass(frozen=True)
class GroundedCaption:
    text: str
    phrases: tuple[GroundedPhrase, ...]


def grounded_caption(scene: Scene) -> GroundedCaption:
    """One sentence naming every shape (grouped by colour and shape, left to right) and every stuff
    class, e.g. "Two red circles and a small blue star on the grass under the sky." Each group and
    each stuff class is a grounded phrase."""
    groups: dict[str, list[int]] = {}
    for index, thing in sorted(enumerate(scene.things), key=lambda item: item[1].centroid[0]):
        groups.setdefault(thing.composition, []).append(index)
    pieces: list[tuple[str, GroundedPhrase | None]] = []
    for number, members in enumerate(groups.values()):
        if number:
            pieces.append((" and " if number == len(groups) - 1 else ", ", None))
        pieces.append((_group_words(scene.things, members), GroundedPhrase(0, 0, things=tuple(members))))
    names = [region.name for region in scene.stuff]
    prepositions = (
        [_ALONE_PREPOSITIONS[names[0]]]
        if len(names) == 1
        else [_LOWER_PREPOSITIONS[names[1]], _UPPER_PREPOSITIONS[names[0]]]
    )
    for name, preposition in zip(reversed(names), prepositions, strict=True):
        pieces += [(f" {preposition} ", None), (f"the {name}", GroundedPhrase(0, 0, stuff=name))]
    pieces.append((".", None))
    return _assemble(pieces)


def _group_words(things: Sequence[Thing], members: list[int]) -> str:
    first = things[members[0]]
    if len(members) == 1:
        return _article(f"{first.size} {first.composition}")
    return f"{_NUMBERS[len(members)]} {first.colour} {plural(first.shape)}"


def _assemble(pieces: list[tuple[str, GroundedPhrase | None]]) -> GroundedCaption:
    """Join the pieces (capitalising the first letter) and place each phrase at its offsets."""
    text, phrases = "", []
    for words, phrase in pieces:
        if not text:
            words = words[0].upper() + words[1:]
        if phrase is not None:
            phrases.append(GroundedPhrase(len(text), len(text) + len(words), phrase.things, phrase.stuff))
        text += words
    return GroundedCaption(text, tuple(phrases))


# --- conversations -------------------------------------------------------------------------------


def conversation(rng: np.random.Generator, scene: Scene, shapes: Sequence[str]) -> list[dict[str, str]]:
    """Two to four LLaVA turns (``{"from": "human" | "gpt", "value"}`` pairs) about counts, colours,
    positions and the background; the first question starts with ``"<image>\\n"``.

    Args:
        shapes: every shape name of the world (counting questions also ask about absent ones).
    """
    pairs = _questions(rng, scene, shapes)
    order = rng.permutation(len(pairs))[: int(rng.integers(2, 5))]
    turns = []
    for position, index in enumerate(sorted(int(i) for i in order)):
        question, answer = pairs[index]
        turns.append({"from": "human", "value": f"<image>\n{question}" if position == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def _questions(rng: np.random.Generator, scene: Scene, shapes: Sequence[str]) -> list[tuple[str, str]]:
    things = scene.things
    counts = {shape: sum(thing.shape == shape for thing in things) for shape in shapes}
    asked = shapes[int(rng.integers(len(shapes)))]
    pairs = [(f"How many {plural(asked)} are there?", _count_answer(counts[asked], asked))]
    total = len(things)
    pairs.append(("How many objects are in the image?", _count_answer(total, "object")))
    single = [thing for thing in things if counts[thing.shape] == 1]
    if single:
        thing = single[int(rng.integers(len(single)))]
        pairs.append((f"What colour is the {thing.shape}?", f"The {thing.shape} is {thing.colour}."))
    margin = RELATION_MARGIN * scene.side
    placed = [
        (first, second)
        for first in single
        for second in single
        if first is not second and abs(first.centroid[0] - second.centroid[0]) > margin
    ]
    if placed:
        first, second = placed[int(rng.integers(len(placed)))]
        side = "left" if first.centroid[0] < second.centroid[0] else "right"
        pairs.append(
            (
                f"Is the {first.shape} left or right of the {second.shape}?",
                f"The {first.shape} is to the {side} of the {second.shape}.",
            )
        )
    names = [_BACKGROUND_WORDS[region.name] for region in scene.stuff]
    background = f"{names[0]} above {names[1]}" if len(names) == 2 else names[0]
    pairs.append(("What is in the background?", f"The background shows {background}."))
    return pairs


def _count_answer(count: int, noun: str) -> str:
    if count == 1:
        return f"There is 1 {noun}."
    return f"There are {count if count else 'no'} {plural(noun)}."
