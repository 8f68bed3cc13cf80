"""Prompt builders: golden strings per task, the Task enum and table, category prompts, and the
reproduction of every official conversation stored in the parity fixtures."""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from parity_support import AVAILABLE, SKIP_REASON, fixture_names, load
from xsam import tokens
from xsam.config import TokenConfig
from xsam.tasks import (
    Task,
    chat,
    gcg,
    generic,
    interactive,
    reasoning,
    referring,
    templates,
    visual_grounding,
)
from xsam.tasks.conversation import Turn, encode_conversation
from xsam.tasks.generic import CategorySpec, SegmentationKind, clean_category_name, parse_category_prompt
from xsam.tasks.registry import TASKS, all_template_lists


# ------------------------------------------------------------------------------------- golden strings
def test_generic_prompt_cleans_and_wraps_categories():
    turns = generic.build_prompt(["wall-other-merged", "Person", "traffic-light", "door-stuff"])
    assert turns == [
        Turn(
            "<image>\nCan you segment the image based on the following categories: <p>wall</p>, "
            "<p>person</p>, <p>traffic light</p>, <p>door</p>? Please output the segmentation masks.",
            "<SEG>.",
        )
    ]
    generation = generic.build_prompt(["sky"], question_template=1, answer_template=None)
    assert generation == [
        Turn(
            "<image>\nCan you generate segmentation masks for this image based on the specified "
            "categories: <p>sky</p>? Please generate the segmentation masks."
        )
    ]


def test_clean_category_name_follows_official_order():
    assert clean_category_name("wall-other-merged") == "wall"
    assert clean_category_name("Tree-Merged") == "tree merged"  # case-sensitive removal, then lower
    assert clean_category_name("pavement-merged") == "pavement"
    assert clean_category_name(" road, route") == " road, route"  # whitespace and commas kept


def test_referring_prompt_is_multi_turn_and_lower_cases():
    turns = referring.build_prompt(
        ["  The Flag Patch ", "the red car"], question_template=[1, 0], answer_template=[3, 4]
    )
    assert turns == [
        Turn("<image>\nPlease segment <p>the flag patch</p> in this image.", "Sure, it is <SEG>."),
        Turn(
            "Please identify and segment the <p>the red car</p> in this image.",
            "Sure, the segmentation mask is <SEG>.",
        ),
    ]
    assert referring.build_prompt("Cat", answer_template=None) == [
        Turn("<image>\nPlease identify and segment the <p>cat</p> in this image.")
    ]


def test_reasoning_prompts_long_short_and_explanatory():
    query = " What keeps the Head safe? "
    assert reasoning.build_prompt(query, is_sentence=True) == [
        Turn(
            "<image>\n<p>What keeps the Head safe?</p> Please output the corresponding segmentation mask.",
            "<SEG>.",
        )
    ]
    assert reasoning.build_prompt("the helmet", is_sentence=False, answer_template=1) == [
        Turn(
            "<image>\nCan you segment <p>the helmet</p> in this image? Please output the segmentation mask.",
            "It is <SEG>.",
        )
    ]
    explained = reasoning.build_prompt(
        query, is_sentence=True, explanation="The helmet protects the head.", answer_template=3
    )
    assert explained == [
        Turn(
            "<image>\n<p>What keeps the Head safe?</p> Please explain why and output the corresponding "
            "segmentation mask.",
            "The helmet protects the head. And it is <SEG>.",
        )
    ]


def test_gcg_prompt_and_answer_spacing():
    assert gcg.build_prompt() == [
        Turn(
            "<image>\nCould you please give me a brief description of the image? Please respond with "
            "interleaved segmentation masks for the corresponding parts of the answer."
        )
    ]
    caption = "A cup sits on a saucer."
    assert caption[0:5] == "A cup" and caption[14:22] == "a saucer"
    answer = gcg.build_answer(caption, [(0, 5), (14, 22)], answer_template=1)
    assert answer == "<p>A cup</p>  sits on <p>a saucer</p> . And <SEG>."
    # A phrase at the very end: its extra space is stripped before the answer template.
    assert gcg.build_answer("Two dogs", [(4, 8)]) == "Two <p>dogs</p> <SEG>."
    turns = gcg.build_training_prompt(caption, [(0, 5)], question_template=1, answer_template=2)
    assert turns == [
        Turn(
            "<image>\nCan you provide a brief description of the this image? Please output interleaved "
            "segmentation masks for the corresponding phrases.",
            "<p>A cup</p>  sits on a saucer. The segmentation mask is <SEG>.",
        )
    ]


@pytest.mark.parametrize("spans", [[(3, 3)], [(0, 99)], [(5, 8), (0, 4)], [(0, 6), (4, 8)], []])
def test_gcg_rejects_bad_spans(spans):
    with pytest.raises(ValueError):
        gcg.build_answer("Two dogs run", spans)


def test_region_prompts():
    assert interactive.build_prompt() == [
        Turn(
            "<image>\nCan you segment the image based on the following regions: <p><region></p>? "
            "Please output the corresponding segmentation mask.",
            "<SEG>.",
        )
    ]
    assert visual_grounding.build_prompt(3, question_template=1, answer_template=4) == [
        Turn(
            "<image>\nCan you generate segmentation masks for this image based on the specified regions: "
            "<p><region></p>, <p><region></p>, <p><region></p>? Please generate the segmentation masks.",
            "Sure, the segmentation result is <SEG>.",
        )
    ]
    with pytest.raises(ValueError, match="at least one region"):
        visual_grounding.build_prompt(0)


def test_chat_turns_from_llava():
    conversations = [
        {"from": "gpt", "value": "skipped: nothing asked yet"},
        {"from": "human", "value": "What is this?\n<image>"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "What colour is it?"},
        {"from": "gpt", "value": "Black."},
        {"from": "human", "value": "Is it asleep?"},
    ]
    assert chat.from_llava(conversations) == [
        Turn("<image>\nWhat is this?", "A cat."),
        Turn("What colour is it?", "Black."),
        Turn("Is it asleep?"),
    ]
    with pytest.raises(ValueError, match="unknown conversation role"):
        chat.from_llava([{"from": "system", "value": "hi"}])
    assert chat.build_prompt("Describe the image.") == [Turn("<image>\nDescribe the image.")]
    history = [Turn("<image>\nWhat is this?", "A cat.")]
    assert chat.build_prompt("Why?", history=history) == [*history, Turn("Why?")]


# ------------------------------------------------------------------------------- template handling
def test_template_lists_are_consistent():
    config = TokenConfig()
    assert tuple(config.added_tokens) == (tokens.SEG, tokens.PHRASE_START, tokens.PHRASE_END)
    assert (config.image_placeholder, config.region_placeholder) == (tokens.IMAGE, tokens.REGION)
    for template_list in all_template_lists():
        assert 0 < len(template_list) <= template_list.official_size, template_list.name
        assert len(set(template_list.templates)) == len(template_list), template_list.name
        if "answers" in template_list.name:
            assert all(t.endswith(f"{tokens.SEG}.") for t in template_list.templates)
        else:
            assert all(t.count("{") == 1 or "gcg" in template_list.name for t in template_list.templates)
        # templates[0] stands for the list when custom templates are checked: all must agree
        specials = (tokens.SEG, tokens.PHRASE_START, tokens.PHRASE_END, tokens.REGION)
        for template in template_list.templates:
            assert templates.template_fields(template) == template_list.fields, template
            assert [template.count(t) for t in specials] == [
                template_list.templates[0].count(t) for t in specials
            ], template
            assert template_list.get(template) == template  # every listed text passes as custom
    partial = {t.name for t in all_template_lists() if not t.complete}
    assert partial == {
        "generic questions",
        "referring questions",
        "reasoning short questions",
        "reasoning explanatory questions",
        "gcg questions",
        "visual grounding questions",
    }


def test_template_index_errors_are_clear():
    with pytest.raises(IndexError, match=r"generic answers: template index 5 out of range \(0..4\)"):
        generic.build_prompt(["sky"], answer_template=5)
    with pytest.raises(IndexError):
        referring.build_prompt("cat", question_template=-1)
    with pytest.raises(ValueError, match="2 template choices for 3 turns"):
        referring.build_prompt(["a", "b", "c"], question_template=[0, 1])
    with pytest.raises(ValueError, match="exactly one expression"):
        referring.build_prompt(["a", "b"], answer_template=None)
    with pytest.raises(TypeError):
        generic.build_prompt("sky")


def test_custom_templates_are_used_verbatim():
    custom = generic.build_prompt(
        ["sky", "wall-other-merged"],
        question_template="Find {categories} in this photo {{please}}.",
        answer_template="Here: <SEG>.",
    )
    assert custom == [Turn("<image>\nFind <p>sky</p>, <p>wall</p> in this photo {please}.", "Here: <SEG>.")]
    # a custom string equal to a listed template gives the same prompt as its index
    listed = referring.QUESTIONS.templates[3]
    assert referring.build_prompt("cat", question_template=listed) == referring.build_prompt(
        "cat", question_template=3
    )
    # one string applies to every turn (a string is not a per-turn sequence); lists may mix kinds
    assert referring.build_prompt(["A", "b"], question_template="Show {expression}.") == [
        Turn("<image>\nShow <p>a</p>.", "<SEG>."),
        Turn("Show <p>b</p>.", "<SEG>."),
    ]
    mixed = referring.build_prompt(
        ["a", "b"], question_template=[0, "Show {expression}."], answer_template=["Ok <SEG>.", 1]
    )
    assert mixed == [
        Turn("<image>\nPlease identify and segment the <p>a</p> in this image.", "Ok <SEG>."),
        Turn("Show <p>b</p>.", "It is <SEG>."),
    ]
    assert reasoning.build_prompt(
        "Why?",
        is_sentence=True,
        explanation="E.",
        question_template="{query} Explain.",
        answer_template="So <SEG>.",
    ) == [Turn("<image>\n<p>Why?</p> Explain.", "E. So <SEG>.")]
    assert gcg.build_training_prompt(
        "Two dogs", [(4, 8)], question_template="Describe it {{briefly}}.", answer_template="Masks: <SEG>."
    ) == [Turn("<image>\nDescribe it {briefly}.", "Two <p>dogs</p> Masks: <SEG>.")]
    assert interactive.build_prompt(question_template="Segment {regions}.", answer_template=None) == [
        Turn("<image>\nSegment <p><region></p>.")
    ]
    assert visual_grounding.build_prompt(2, question_template="{regions}") == [
        Turn("<image>\n<p><region></p>, <p><region></p>", "<SEG>.")
    ]


@pytest.mark.parametrize(
    ("template_list", "template", "message"),
    [
        (generic.QUESTIONS, "Segment {category}.", r"exactly the placeholders \{categories\}"),
        (generic.QUESTIONS, "Segment the image.", r"\{categories\}, each once \(found none\)"),
        (generic.QUESTIONS, "{categories} and {categories}", "each once"),
        (generic.QUESTIONS, "Segment {categories} in {image}.", "exactly the placeholders"),
        (generic.QUESTIONS, "Segment {}.", "plain {name} fields"),
        (generic.QUESTIONS, "Segment {0}.", "plain {name} fields"),
        (generic.QUESTIONS, "Segment {categories!r}.", "plain {name} fields"),
        (generic.QUESTIONS, "Segment {categories:>9}.", "plain {name} fields"),
        (generic.QUESTIONS, "Segment {categories.x}.", "plain {name} fields"),
        (generic.QUESTIONS, "Segment {categories", "malformed template"),
        (generic.QUESTIONS, "Segment {categories} }", "malformed template"),
        (generic.QUESTIONS, "   ", "must not be empty"),
        (generic.QUESTIONS, "Segment <p>sky</p> and {categories}.", "'<p>' exactly 0"),
        (generic.ANSWERS, "Done.", "'<SEG>' exactly 1 time"),
        (generic.ANSWERS, "<SEG> <SEG>.", "'<SEG>' exactly 1 time"),
        (generic.ANSWERS, "It is {answer} <SEG>.", "no placeholders"),
        (gcg.QUESTIONS, "Describe {image}.", "no placeholders"),
        (visual_grounding.QUESTIONS, "Segment <region> like {regions}.", "'<region>' exactly 0"),
        (referring.QUESTIONS, "Segment {categories}.", r"\{expression\}"),
        (reasoning.LONG_QUESTIONS, "{expression} Segment it.", r"\{query\}"),
    ],
)
def test_custom_template_validation(template_list, template, message):
    with pytest.raises(ValueError, match=message) as error:
        template_list.get(template)
    assert template_list.name in str(error.value)


def test_custom_templates_are_checked_by_the_builders():
    with pytest.raises(ValueError, match=r"generic questions: .*\{categories\}"):
        generic.build_prompt(["sky"], question_template="Segment {category}.")
    with pytest.raises(ValueError, match=r"referring answers: .*'<SEG>'"):
        referring.build_prompt(["a", "b"], answer_template=[0, "No mask."])
    with pytest.raises(ValueError, match="reasoning short questions"):
        reasoning.build_prompt("the cat", is_sentence=False, question_template="Segment it.")
    with pytest.raises(ValueError, match="reasoning explanatory answers"):
        reasoning.build_prompt("q", is_sentence=True, explanation="E.", answer_template="{x} <SEG>.")
    with pytest.raises(ValueError, match="gcg answers"):
        gcg.build_answer("Two dogs", [(4, 8)], answer_template="Done.")
    with pytest.raises(ValueError, match="visual grounding questions"):
        interactive.build_prompt(question_template="Segment this.")
    for choice in (1.0, True, None, b"x"):
        with pytest.raises(TypeError, match="an index or a template string"):
            generic.QUESTIONS.get(choice)


def test_sampled_prompts_are_reproducible_and_vary():
    def sampled(seed: int) -> list[list[Turn]]:
        rng = random.Random(seed)
        return [
            generic.sample_prompt(["sky", "person"], rng),
            referring.sample_prompt(["a dog", "the cat"], rng),
            reasoning.sample_prompt("why?", rng, is_sentence=True, explanation="Because."),
            gcg.sample_prompt("Two dogs", [(4, 8)], rng),
            interactive.sample_prompt(rng),
            visual_grounding.sample_prompt(2, rng),
        ]

    assert sampled(0) == sampled(0)
    seen = {str(sampled(seed)) for seed in range(20)}
    assert len(seen) > 1
    for turns in sampled(3):
        assert turns[0].question.startswith("<image>\n")
        assert all(turn.answer is not None and turn.answer.endswith("<SEG>.") for turn in turns)


def test_reasoning_sampling_uses_explanations_about_half_the_time():
    rng = random.Random(0)
    explained = sum(
        reasoning.sample_prompt("q", rng, is_sentence=True, explanation="E.")[0].answer.startswith("E. ")
        for _ in range(400)
    )
    assert 150 < explained < 250


def test_generic_prompt_encodes_one_condition_per_category(tokenizer):
    categories = ["person", "wall-other-merged", "traffic light"]
    encoded = encode_conversation(tokenizer, generic.build_prompt(categories))
    assert encoded.cond_ids.max().item() == len(categories) - 1
    assert (encoded.seg_ids >= 0).sum().item() == 1
    assert (encoded.input_ids == TokenConfig().image_token_index).sum().item() == 1


# ------------------------------------------------------------------------------ Task and its table
def test_task_enum_and_table():
    assert Task("referring") is Task.REFERRING
    assert Task("refseg") is Task.REFERRING  # official names are accepted too
    assert {task: task.official_name for task in Task} == {
        Task.GENERIC: "genseg",
        Task.OPEN_VOCAB: "ovseg",
        Task.REFERRING: "refseg",
        Task.REASONING: "reaseg",
        Task.GCG: "gcgseg",
        Task.INTERACTIVE: "intseg",
        Task.VGD: "vgdseg",
        Task.CHAT: "imgconv",
    }
    assert set(TASKS) == set(Task)
    assert {task for task in Task if TASKS[task].decode_per_seg} == {Task.REFERRING, Task.REASONING}
    assert {task for task in Task if TASKS[task].generates} == {Task.GCG, Task.CHAT}
    assert TASKS[Task.GENERIC].score_threshold == 0.0 and TASKS[Task.VGD].demo_score_threshold == 0.5
    assert TASKS[Task.INTERACTIVE].score_threshold == 0.5
    assert TASKS[Task.GCG].mask_threshold == 0.5


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'segment'") as error:
        Task("segment")
    for task in Task:
        assert task.value in str(error.value)


# -------------------------------------------------------------------------------- category prompts
def test_parse_category_prompt_kinds():
    spec = parse_category_prompt("ins: person, flag; sem: wall, sky")
    assert spec == CategorySpec(
        ("person", "flag", "wall", "sky"), (True, True, False, False), SegmentationKind.PANOPTIC
    )
    assert parse_category_prompt("ins: person").kind is SegmentationKind.INSTANCE
    semantic = parse_category_prompt("sem: sky, road,")
    assert semantic.kind is SegmentationKind.SEMANTIC and semantic.names == ("sky", "road")
    swapped = parse_category_prompt(" SEM: sky ; INS: car ;")
    assert swapped.names == ("car", "sky") and swapped.is_thing == (True, False)


def test_category_names_with_commas():
    quoted = parse_category_prompt('sem: "road, route", sky')
    assert quoted.names == ("road, route", "sky")
    assert CategorySpec.from_names(stuff=["road, route"]).names == ("road, route",)
    assert generic.format_categories(quoted.names) == "<p>road, route</p>, <p>sky</p>"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty category prompt"),
        (" ; ", "empty category prompt"),
        ("person, car", "must start with 'ins:' or 'sem:'"),
        ("obj: person", "must start with 'ins:' or 'sem:'"),
        ("ins: a; ins: b", "'ins:' appears more than once"),
        ("ins: ; sem: sky", "'ins:' lists no category names"),
        ("ins: car; sem: car", "given more than once"),
    ],
)
def test_parse_category_prompt_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_category_prompt(prompt)


def test_category_spec_shuffle_keeps_pairs():
    spec = parse_category_prompt("ins: a, b, c; sem: d, e")
    shuffled = spec.shuffled(random.Random(1))
    assert sorted(shuffled.names) == sorted(spec.names)
    assert dict(zip(shuffled.names, shuffled.is_thing, strict=True)) == dict(
        zip(spec.names, spec.is_thing, strict=True)
    )


# ------------------------------------------------------------------------------ fixture reproduction
class UnlistedTemplateWarning(UserWarning):
    """A fixture realises an official question template that our partial list lacks; the test
    reproduced the fixture with that template passed as a custom template."""


@dataclasses.dataclass
class _Rebuilder:
    """How to rebuild one fixture's conversation with our prompt builders.

    ``build(question_template=..., answer_template=...)`` takes one choice per turn when
    ``multi_turn`` is set, else a single choice; ``fields`` holds, per turn, the rendered text of
    each placeholder (what our code puts in for ``{categories}`` etc.; empty when there is none).
    ``questions`` is None for tasks without templates (chat).
    """

    build: Callable[..., list[Turn]]
    questions: templates.TemplateList | None
    answers: templates.TemplateList | None
    fields: list[dict[str, str]]
    multi_turn: bool = False

    def rebuild(self, questions: list[Any], answers: list[Any]) -> list[Turn]:
        if self.questions is None:
            return self.build()
        if self.multi_turn:
            return self.build(question_template=questions, answer_template=answers)
        (question,), (answer,) = questions, answers
        return self.build(question_template=question, answer_template=answer)


@dataclasses.dataclass
class _Reproduction:
    """The template choice (per turn) that rebuilt a fixture, and the realised question templates
    our lists lack (turn, template), which were passed as custom templates."""

    questions: list[Any]
    answers: list[Any]
    turns: list[Turn]
    unlisted: list[tuple[int, str]]


def _expected_turns(meta: dict[str, Any]) -> list[Turn]:
    """The official conversation as our turns (template prefix/suffix and ``<|end|>`` removed)."""
    turns = []
    for turn in meta["conversation"]:
        assert turn["input"].startswith("<|user|>\n") and turn["input"].endswith("<|end|>\n<|assistant|>\n")
        question = turn["input"].removeprefix("<|user|>\n").removesuffix("<|end|>\n<|assistant|>\n")
        assert turn["output"].endswith("<|end|>")
        turns.append(Turn(question, turn["output"].removesuffix("<|end|>")))
    return turns


def _field(meta: dict[str, Any], key: str) -> Any:
    """A prompt field of a task fixture, or the sampled list of a training fixture."""
    fields = meta.get("prompt_fields", {})
    return fields[key] if key in fields else meta["sampled_cats_or_sents"]


def _generic_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    categories = _field(meta, "sampled_cats")
    classes = meta.get("genseg_classes")
    if classes:  # the demo-style class split must parse back to the same categories
        prompt = f"ins: {', '.join(classes['things'])}; sem: {', '.join(classes['stuffs'])}"
        spec = parse_category_prompt(prompt)
        assert sorted(spec.names) == sorted(categories) and spec.kind is SegmentationKind.PANOPTIC
        assert classes["all_in_prompt_order"] == categories
    return _Rebuilder(
        lambda **choice: generic.build_prompt(categories, **choice),
        generic.QUESTIONS,
        generic.ANSWERS,
        [{"categories": generic.format_categories(categories)}],
    )


def _referring_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    sentences = _field(meta, "sampled_sents")
    return _Rebuilder(
        lambda **choice: referring.build_prompt(sentences, **choice),
        referring.QUESTIONS,
        referring.ANSWERS,
        [{"expression": referring.format_expression(sentence)} for sentence in sentences],
        multi_turn=True,
    )


def _reasoning_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    fields = meta["prompt_fields"]
    explanation = fields.get("explain")
    queries = fields["sampled_sents"]
    return _Rebuilder(
        lambda **choice: reasoning.build_prompt(
            queries, is_sentence=fields["is_sentence"], explanation=explanation, **choice
        ),
        reasoning.question_templates(is_sentence=fields["is_sentence"], explanatory=explanation is not None),
        reasoning.EXPLANATORY_ANSWERS if explanation else reasoning.ANSWERS,
        [{"query": templates.wrap_phrase(query.strip())} for query in queries],
        multi_turn=True,
    )


def _gcg_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    fields = meta["prompt_fields"]
    spans = [annotation["tokens_positive"] for annotation in fields["annotations"]]
    return _Rebuilder(
        lambda **choice: gcg.build_training_prompt(fields["caption"], spans, **choice),
        gcg.QUESTIONS,
        gcg.ANSWERS,
        [{}],
    )


def _region_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    num_regions = len(meta["prompt_fields"]["sampled_labels"])
    if meta["task"] == Task.INTERACTIVE.official_name:
        assert num_regions == 1
        build = interactive.build_prompt
    else:

        def build(**choice: Any) -> list[Turn]:
            return visual_grounding.build_prompt(num_regions, **choice)

    return _Rebuilder(
        build,
        visual_grounding.QUESTIONS,
        visual_grounding.ANSWERS,
        [{"regions": visual_grounding.format_regions(num_regions)}],
    )


def _chat_rebuilder(meta: dict[str, Any]) -> _Rebuilder:
    conversations = meta["prompt_fields"]["conversations"]
    return _Rebuilder(lambda: chat.from_llava(conversations), None, None, [])


_REBUILDERS: dict[Task, Callable[[dict[str, Any]], _Rebuilder]] = {
    Task.GENERIC: _generic_rebuilder,
    Task.OPEN_VOCAB: _generic_rebuilder,
    Task.REFERRING: _referring_rebuilder,
    Task.REASONING: _reasoning_rebuilder,
    Task.GCG: _gcg_rebuilder,
    Task.INTERACTIVE: _region_rebuilder,
    Task.VGD: _region_rebuilder,
    Task.CHAT: _chat_rebuilder,
}


def _index_options(rebuilder: _Rebuilder, expected: list[Turn]) -> list[list[tuple[int, int]]]:
    """Per turn, every (question, answer) index pair of our lists that rebuilds that turn.

    Each pair is tried on all turns at once; a turn's text depends only on its own choice (and on
    being first, for ``<image>``), so this covers every combination. The combined choice is
    verified on the whole conversation afterwards.
    """
    options: list[list[tuple[int, int]]] = [[] for _ in expected]
    for question in range(len(rebuilder.questions)):
        for answer in range(len(rebuilder.answers)):
            built = rebuilder.rebuild([question] * len(expected), [answer] * len(expected))
            for turn, (ours, theirs) in enumerate(zip(built, expected, strict=True)):
                if ours == theirs:
                    options[turn].append((question, answer))
    return options


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _derive_template(text: str, fields: dict[str, str]) -> str:
    """The template that renders to ``text``: the rendered field replaced by its placeholder,
    every other character kept (literal braces doubled)."""
    assert len(fields) <= 1, "only templates with at most one placeholder are derived"
    if not fields:
        return _escape_braces(text)
    ((name, rendered),) = fields.items()
    assert text.count(rendered) == 1, (
        f"the rendered {{{name}}} {rendered!r} does not occur exactly once in the realised question "
        f"{text!r}: our rendering of the field differs (a bug, not a missing template)"
    )
    before, after = text.split(rendered)
    return f"{_escape_braces(before)}{{{name}}}{_escape_braces(after)}"


def _custom_question(name: str, rebuilder: _Rebuilder, expected: list[Turn], turn: int) -> tuple[str, int]:
    """Fallback for a turn no index pair rebuilds: derive its question template from the realised
    text, check it, and find the answer by index (answer lists are complete)."""
    questions, answers = rebuilder.questions, rebuilder.answers
    assert not questions.complete, (
        f"{name} turn {turn}: no template of the complete list {questions.name!r} rebuilds {expected[turn]!r}"
    )
    text = expected[turn].question
    if turn == 0:
        assert text.startswith(f"{tokens.IMAGE}\n"), f"{name}: the first question lacks '<image>\\n'"
        text = text.removeprefix(f"{tokens.IMAGE}\n")
    fields = rebuilder.fields[turn]
    derived = _derive_template(text, fields)
    # (a) well-formed: the list's placeholders and special tokens, and nothing else changed
    try:
        questions.get(derived)
    except ValueError as error:
        raise AssertionError(
            f"{name} turn {turn}: the realised question is no valid template: {error}"
        ) from None
    assert derived.format(**fields) == text, f"{name}: derived template {derived!r} does not render back"
    normalised = {" ".join(listed.lower().split()): listed for listed in questions.templates}
    near = normalised.get(" ".join(derived.lower().split()))
    assert near is None or near == derived, (
        f"{name} turn {turn}: realised template {derived!r} differs from our {near!r} only in "
        f"whitespace or case: a bug in our list or rendering, not a missing template"
    )
    count = len(expected)
    matches = [
        answer
        for answer in range(len(answers))
        if rebuilder.rebuild([derived] * count, [answer] * count)[turn] == expected[turn]
    ]
    assert matches, (
        f"{name} turn {turn}: with the derived question template {derived!r}, no answer of the "
        f"complete list {answers.name!r} rebuilds {expected[turn]!r}"
    )
    return derived, matches[0]


def _reproduce(
    name: str, meta: dict[str, Any], ref: dict[str, torch.Tensor], tokenizer: Any
) -> _Reproduction:
    """Rebuild a fixture's conversation with our builders and check its encoding against ``ref``.

    Every index of our lists is tried first. A turn that no index rebuilds may realise an official
    question template our partial list lacks: its template is then derived from the realised text
    and passed as a custom template, and an :class:`UnlistedTemplateWarning` names it. Answers must
    always match by index.
    """
    expected = _expected_turns(meta)
    rebuilder = _REBUILDERS[Task(meta["task"])](meta)
    questions: list[Any] = []
    answers: list[Any] = []
    unlisted: list[tuple[int, str]] = []
    if rebuilder.questions is not None:
        assert len(rebuilder.fields) == len(expected), f"{name}: turn count differs"
        options = _index_options(rebuilder, expected)
        for turn, found in enumerate(options):
            if found:
                question, answer = found[0]
            else:
                question, answer = _custom_question(name, rebuilder, expected, turn)
                if question not in rebuilder.questions.templates:
                    unlisted.append((turn, question))
            questions.append(question)
            answers.append(answer)
    # (b) the combined choice rebuilds the whole conversation and its encoding
    turns = rebuilder.rebuild(questions, answers)
    assert turns == expected, (
        f"{name}: questions {questions}, answers {answers} rebuild {turns!r}, not {expected!r}"
    )
    encoded = encode_conversation(tokenizer, turns)
    assert torch.equal(encoded.input_ids, ref["input_ids"].flatten()), f"{name} {questions}: input_ids differ"
    assert torch.equal(encoded.labels, ref["labels"].flatten()), f"{name}: labels differ"
    assert torch.equal(encoded.seg_ids, ref["seg_ids"].flatten()), f"{name}: seg_ids differ"
    if "cond_ids" in ref:
        assert torch.equal(encoded.cond_ids, ref["cond_ids"].flatten()), f"{name}: cond_ids differ"
    # (c) visible, not silent
    for turn, template in unlisted:
        listed = rebuilder.questions
        warnings.warn(
            f"{name} turn {turn}: realised question template {template!r} is not in our partial "
            f"{listed.name!r} list ({len(listed)}/{listed.official_size}); "
            "reproduced it as a custom template",
            UnlistedTemplateWarning,
            stacklevel=2,
        )
    return _Reproduction(questions, answers, turns, unlisted)


@pytest.mark.parity
@pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)
@pytest.mark.parametrize("name", fixture_names("task_*.json") + fixture_names("train_*.json"))
def test_fixture_conversation_is_reproduced(name, tokenizer):
    meta, ref = load(name)
    _reproduce(name, meta, ref, tokenizer)


def test_every_task_has_a_fixture_rebuilder():
    assert set(_REBUILDERS) == set(Task)


# ------------------------------------------------------------- fallback for templates we do not list
_BUILDER_MODULES = (generic, referring, reasoning, gcg, interactive, visual_grounding)


def _drop_templates(
    monkeypatch: pytest.MonkeyPatch, template_list: templates.TemplateList, *dropped: str
) -> None:
    """Simulate a list that lacks ``dropped`` (same name and official size) wherever it is imported."""
    kept = tuple(t for t in template_list.templates if t not in dropped)
    assert len(kept) == len(template_list) - len(set(dropped)) and kept
    reduced = dataclasses.replace(template_list, templates=kept)
    patched = 0
    for module in _BUILDER_MODULES:
        for attribute, value in vars(module).items():
            if value is template_list:
                monkeypatch.setattr(module, attribute, reduced)
                patched += 1
    assert patched >= 1  # the module that defines the list (and any that imported it)


def _fake_fixture(
    tokenizer: Any, task: Task, turns: list[Turn], **prompt_fields: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A fixture-like record (official conversation layout and encoded tensors) for ``turns``."""
    conversation = [
        {"input": f"<|user|>\n{turn.question}<|end|>\n<|assistant|>\n", "output": f"{turn.answer}<|end|>"}
        for turn in turns
    ]
    encoded = encode_conversation(tokenizer, turns)
    ref = {key: getattr(encoded, key)[None] for key in ("input_ids", "labels", "cond_ids", "seg_ids")}
    return {"task": task.official_name, "prompt_fields": prompt_fields, "conversation": conversation}, ref


def test_fixture_fallback_reproduces_an_unlisted_generic_template(tokenizer, monkeypatch):
    categories = ["wall-other-merged", "a {b}", "person"]  # braces in the field stay literal
    unlisted = generic.QUESTIONS.templates[2]
    turns = generic.build_prompt(categories, question_template=2, answer_template=4)
    meta, ref = _fake_fixture(tokenizer, Task.GENERIC, turns, sampled_cats=categories)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _reproduce("fake", meta, ref, tokenizer).unlisted == []  # found by index: no fallback
    _drop_templates(monkeypatch, generic.QUESTIONS, unlisted)
    assert unlisted not in generic.QUESTIONS.templates
    with pytest.warns(
        UnlistedTemplateWarning, match=r"fake turn 0: .*Could you output .*'generic questions'"
    ):
        result = _reproduce("fake", meta, ref, tokenizer)
    assert result.unlisted == [(0, unlisted)] and result.questions == [unlisted]
    assert result.answers == [4] and result.turns == turns


def test_fixture_fallback_is_per_turn(tokenizer, monkeypatch):
    sentences = ["the small spoon", "The {coffee} cup", "a saucer"]
    turns = referring.build_prompt(sentences, question_template=[3, 6, 3], answer_template=[0, 4, 2])
    meta, ref = _fake_fixture(tokenizer, Task.REFERRING, turns, sampled_sents=sentences)
    dropped = referring.QUESTIONS.templates[6]
    _drop_templates(monkeypatch, referring.QUESTIONS, dropped)
    with pytest.warns(UnlistedTemplateWarning) as record:
        result = _reproduce("fake", meta, ref, tokenizer)
    assert len(record) == 1 and "turn 1" in str(record[0].message)
    assert result.questions == [3, dropped, 3] and result.answers == [0, 4, 2]


def test_fixture_fallback_without_placeholders_and_for_regions(tokenizer, monkeypatch):
    caption, spans = "A cup on a saucer.", [(0, 5), (9, 17)]
    gcg_turns = gcg.build_training_prompt(caption, spans, question_template=1, answer_template=3)
    annotations = [{"tokens_positive": list(span)} for span in spans]
    meta, ref = _fake_fixture(tokenizer, Task.GCG, gcg_turns, caption=caption, annotations=annotations)
    _drop_templates(monkeypatch, gcg.QUESTIONS, gcg.QUESTIONS.templates[1])
    with pytest.warns(UnlistedTemplateWarning, match="'gcg questions'"):
        assert _reproduce("fake", meta, ref, tokenizer).answers == [3]

    vgd_turns = visual_grounding.build_prompt(2, question_template=3, answer_template=1)
    meta, ref = _fake_fixture(tokenizer, Task.VGD, vgd_turns, sampled_labels=[0, 1])
    _drop_templates(monkeypatch, visual_grounding.QUESTIONS, visual_grounding.QUESTIONS.templates[3])
    with pytest.warns(UnlistedTemplateWarning, match="'visual grounding questions'"):
        assert _reproduce("fake", meta, ref, tokenizer).turns == vgd_turns


def test_fixture_fallback_does_not_hide_real_failures(tokenizer, monkeypatch):
    def fails(turns: list[Turn], match: str, task: Task = Task.REFERRING, **fields: Any) -> None:
        meta, ref = _fake_fixture(tokenizer, task, turns, **fields)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning either: it fails before warning
            with pytest.raises(AssertionError, match=match):
                _reproduce("fake", meta, ref, tokenizer)

    cat = {"sampled_sents": ["cat"]}
    # an unlisted question is accepted, but an answer must come from the (complete) answer list
    fails([Turn("<image>\nShow me <p>cat</p>.", "Here: <SEG>.")], "no answer of the complete list", **cat)
    # the field rendered differently (not lower-cased): a bug, not a missing template
    fails([Turn("<image>\nShow me <p>Cat</p>.", "<SEG>.")], "does not occur exactly once", **cat)
    # a listed template with different spacing or case: a bug, not a missing template
    fails(
        [Turn("<image>\nPlease segment  <p>cat</p> in this image.", "<SEG>.")],
        "only in whitespace or case",
        **cat,
    )
    fails([Turn("Please segment <p>cat</p> in this image.", "<SEG>.")], "lacks '<image>", **cat)
    # complete lists never fall back (even with a template of the right shape)
    query = {"sampled_sents": ["Why?"], "is_sentence": True, "explain": None}
    fails([Turn("<image>\n<p>Why?</p> Segment it.", "<SEG>.")], "complete list", Task.REASONING, **query)
    # a derived template must pass the list's checks (here: an extra condition phrase)
    fails([Turn("<image>\nShow me <p>cat</p> and <p>dog</p>.", "<SEG>.")], "'<p>' exactly 0", **cat)
    # the encoding is still compared with the stored ids
    turns = referring.build_prompt("cat", question_template="Show me {expression}.")
    meta, ref = _fake_fixture(tokenizer, Task.REFERRING, turns, **cat)
    ref["labels"] = ref["labels"].clone().fill_(-100)
    with pytest.raises(AssertionError, match="labels differ"):  # before any warning
        _reproduce("fake", meta, ref, tokenizer)


@pytest.mark.parity
@pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)
@pytest.mark.parametrize("name", fixture_names("task_*.json") + fixture_names("train_*.json"))
def test_fixture_fallback_with_the_matched_template_dropped(name, tokenizer, monkeypatch):
    """Drop the question template each fixture matches from our list: the fallback must rebuild it."""
    meta, ref = load(name)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = _reproduce(name, meta, ref, tokenizer)
    rebuilder = _REBUILDERS[Task(meta["task"])](meta)
    if rebuilder.questions is None or rebuilder.questions.complete or first.unlisted:
        # nothing to drop (chat, a complete list) or the fallback already ran: the plain
        # reproduction above is the whole check, and it warned exactly for the unlisted templates
        assert len(record) == len(first.unlisted)
        return
    assert not record
    used = {rebuilder.questions.templates[index] for index in first.questions}
    if len(used) == len(rebuilder.questions):
        pytest.skip(f"dropping {sorted(used)} would empty {rebuilder.questions.name!r}")
    _drop_templates(monkeypatch, rebuilder.questions, *used)
    with pytest.warns(UnlistedTemplateWarning) as record:
        second = _reproduce(name, meta, ref, tokenizer)
    assert second.turns == first.turns and second.answers == first.answers
    assert {template for _, template in second.unlisted} == used and len(record) == len(second.unlisted)
