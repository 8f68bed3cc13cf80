"""Prompt builders: golden strings per task, the Task enum and table, category prompts, and the
reproduction of every official conversation stored in the parity fixtures."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from parity_support import AVAILABLE, SKIP_REASON, fixture_names, load
from xsam.config import TokenConfig
from xsam.tasks import (
    TASKS,
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
    tokens = TokenConfig()
    assert tuple(tokens.added_tokens) == (templates.SEG, templates.PHRASE_START, templates.PHRASE_END)
    assert (tokens.image_placeholder, tokens.region_placeholder) == (templates.IMAGE, templates.REGION)
    for template_list in templates.ALL_TEMPLATE_LISTS:
        assert 0 < len(template_list) <= template_list.official_size, template_list.name
        assert len(set(template_list.templates)) == len(template_list), template_list.name
        if "answers" in template_list.name:
            assert all(t.endswith(f"{templates.SEG}.") for t in template_list.templates)
        else:
            assert all(t.count("{") == 1 or "gcg" in template_list.name for t in template_list.templates)
    partial = {t.name for t in templates.ALL_TEMPLATE_LISTS if not t.complete}
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
    with pytest.raises(ValueError, match="2 template indices for 3 turns"):
        referring.build_prompt(["a", "b", "c"], question_template=[0, 1])
    with pytest.raises(ValueError, match="exactly one expression"):
        referring.build_prompt(["a", "b"], answer_template=None)
    with pytest.raises(TypeError):
        generic.build_prompt("sky")


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
Candidates = Iterator[tuple[dict[str, Any], list[Turn]]]


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


def _grid(build: Callable[..., list[Turn]], **choices: range) -> Candidates:
    for values in itertools.product(*choices.values()):
        indices = dict(zip(choices, values, strict=True))
        yield indices, build(**indices)


def _turn_grid(
    build: Callable[..., list[Turn]],
    count: int,
    questions: templates.TemplateList,
    answers: templates.TemplateList,
) -> Candidates:
    """Per-turn template indices for multi-turn prompts (every combination)."""
    per_turn = itertools.product(range(len(questions)), range(len(answers)))
    for combination in itertools.product(per_turn, repeat=count):
        indices = {
            "question_template": [q for q, _ in combination],
            "answer_template": [a for _, a in combination],
        }
        yield indices, build(**indices)


def _generic_candidates(meta: dict[str, Any]) -> Candidates:
    categories = _field(meta, "sampled_cats")
    classes = meta.get("genseg_classes")
    if classes:  # the demo-style class split must parse back to the same categories
        prompt = f"ins: {', '.join(classes['things'])}; sem: {', '.join(classes['stuffs'])}"
        spec = parse_category_prompt(prompt)
        assert sorted(spec.names) == sorted(categories) and spec.kind is SegmentationKind.PANOPTIC
        assert classes["all_in_prompt_order"] == categories

    def build(**indices: int) -> list[Turn]:
        return generic.build_prompt(categories, **indices)

    yield from _grid(
        build,
        question_template=range(len(templates.GENERIC_QUESTIONS)),
        answer_template=range(len(templates.GENERIC_ANSWERS)),
    )


def _referring_candidates(meta: dict[str, Any]) -> Candidates:
    sentences = _field(meta, "sampled_sents")

    def build(**indices: list[int]) -> list[Turn]:
        return referring.build_prompt(sentences, **indices)

    yield from _turn_grid(build, len(sentences), templates.REFERRING_QUESTIONS, templates.REFERRING_ANSWERS)


def _reasoning_candidates(meta: dict[str, Any]) -> Candidates:
    fields = meta["prompt_fields"]
    explanation = fields.get("explain")
    questions = reasoning.question_templates(
        is_sentence=fields["is_sentence"], explanatory=explanation is not None
    )
    answers = templates.REASONING_EXPLANATORY_ANSWERS if explanation else templates.REASONING_ANSWERS

    def build(**indices: list[int]) -> list[Turn]:
        return reasoning.build_prompt(
            fields["sampled_sents"], is_sentence=fields["is_sentence"], explanation=explanation, **indices
        )

    yield from _turn_grid(build, len(fields["sampled_sents"]), questions, answers)


def _gcg_candidates(meta: dict[str, Any]) -> Candidates:
    fields = meta["prompt_fields"]
    spans = [annotation["tokens_positive"] for annotation in fields["annotations"]]

    def build(**indices: int) -> list[Turn]:
        return gcg.build_training_prompt(fields["caption"], spans, **indices)

    yield from _grid(
        build,
        question_template=range(len(templates.GCG_QUESTIONS)),
        answer_template=range(len(templates.GCG_ANSWERS)),
    )


def _region_candidates(meta: dict[str, Any]) -> Candidates:
    num_regions = len(meta["prompt_fields"]["sampled_labels"])
    if meta["task"] == Task.INTERACTIVE.official_name:
        assert num_regions == 1
        build = interactive.build_prompt
    else:

        def build(**indices: int) -> list[Turn]:
            return visual_grounding.build_prompt(num_regions, **indices)

    yield from _grid(
        build,
        question_template=range(len(templates.VISUAL_GROUNDING_QUESTIONS)),
        answer_template=range(len(templates.VISUAL_GROUNDING_ANSWERS)),
    )


def _chat_candidates(meta: dict[str, Any]) -> Candidates:
    yield {}, chat.from_llava(meta["prompt_fields"]["conversations"])


_CANDIDATES: dict[Task, Callable[[dict[str, Any]], Candidates]] = {
    Task.GENERIC: _generic_candidates,
    Task.OPEN_VOCAB: _generic_candidates,
    Task.REFERRING: _referring_candidates,
    Task.REASONING: _reasoning_candidates,
    Task.GCG: _gcg_candidates,
    Task.INTERACTIVE: _region_candidates,
    Task.VGD: _region_candidates,
    Task.CHAT: _chat_candidates,
}


@pytest.mark.parity
@pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)
@pytest.mark.parametrize("name", fixture_names("task_*.json") + fixture_names("train_*.json"))
def test_fixture_conversation_is_reproduced(name, tokenizer):
    meta, ref = load(name)
    expected = _expected_turns(meta)
    task = Task(meta["task"])
    matches = [(indices, turns) for indices, turns in _CANDIDATES[task](meta) if turns == expected]
    assert matches, (
        f"{name}: no template choice of ours rebuilds {expected!r} "
        f"(partial lists: {[t.name for t in templates.ALL_TEMPLATE_LISTS if not t.complete]})"
    )
    indices, turns = matches[0]
    encoded = encode_conversation(tokenizer, turns)
    assert torch.equal(encoded.input_ids, ref["input_ids"].flatten()), f"{name} {indices}: input_ids differ"
    assert torch.equal(encoded.labels, ref["labels"].flatten()), f"{name}: labels differ"
    assert torch.equal(encoded.seg_ids, ref["seg_ids"].flatten()), f"{name}: seg_ids differ"
    if "cond_ids" in ref:
        assert torch.equal(encoded.cond_ids, ref["cond_ids"].flatten()), f"{name}: cond_ids differ"


def test_every_task_has_a_fixture_rebuilder():
    assert set(_CANDIDATES) == set(Task)
