"""The demo's logic without the page: drawn layers read as visual prompts, every task answered, the
encoding reused per session, chat history, and errors meant for the page."""

import numpy as np
import pytest
import torch

from xsam.demo import Demo, DemoError, Request, Session
from xsam.demo.session import caption_spans, drawn_regions
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel
from xsam.tasks.prediction import Prediction
from xsam.tasks.routing import AUTO

SIZE = (48, 64)


def layer(*spots: tuple[slice, slice]) -> np.ndarray:
    """An RGBA layer of the image's size with the given (rows, columns) spots drawn."""
    drawn = np.zeros((*SIZE, 4), dtype=np.uint8)
    for rows, columns in spots:
        drawn[rows, columns] = (45, 140, 255, 255)
    return drawn


@pytest.fixture
def demo(tiny_model) -> Demo:
    return Demo(XSamPredictor(tiny_model), "tiny")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------- drawn prompts
def test_every_dot_is_a_point_at_its_centre():
    drawn = layer((slice(9, 12), slice(19, 22)), (slice(30, 33), slice(40, 43)))
    assert drawn_regions([drawn], "points", SIZE) == {"points": [[20.0, 10.0], [41.0, 31.0]]}


def test_each_layer_is_one_box_its_extent():
    first, second = layer((slice(5, 20), slice(10, 30))), layer((slice(2, 4), slice(2, 60)))
    assert drawn_regions([first, second], "boxes", SIZE) == {
        "boxes": [[10.0, 5.0, 29.0, 19.0], [2.0, 2.0, 59.0, 3.0]]
    }


def test_scribbles_keep_their_strokes_and_masks_are_filled():
    ring = layer((slice(10, 30), slice(10, 30)))
    ring[13:27, 13:27] = 0  # a drawn outline
    scribble = drawn_regions([ring], "scribbles", SIZE)["masks"]
    mask = drawn_regions([ring], "masks", SIZE)["masks"]
    assert scribble.shape == mask.shape == (1, *SIZE)
    assert not scribble[0, 20, 20] and mask[0, 20, 20]
    assert mask.sum() == 400 and scribble.sum() == 400 - 14 * 14


def test_empty_layers_give_no_prompt_and_bad_layers_are_named():
    assert drawn_regions([layer(), layer()], "masks", SIZE) == {}
    with pytest.raises(DemoError, match="drawing layer 2 is 10x10, the image 64x48"):
        drawn_regions([layer(), np.zeros((10, 10, 4))], "points", SIZE)
    with pytest.raises(DemoError, match="unknown drawing kind 'lasso'"):
        drawn_regions([layer()], "lasso", SIZE)


# ------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize(
    "task, text, drawing, layers",
    [
        ("generic", "ins: a, b; sem: c", "points", []),
        ("open_vocab", "purple star", "points", []),
        ("referring", "the thing", "points", []),
        ("reasoning", "Which part would you sit on?", "points", []),
        ("gcg", "", "points", []),
        ("interactive", "", "points", [layer((slice(20, 24), slice(20, 24)))]),
        ("vgd", "", "boxes", [layer((slice(5, 15), slice(5, 15))), layer((slice(30, 40), slice(30, 50)))]),
        ("chat", "What is this?", "points", []),
    ],
)
def test_every_task_is_answered_and_shaped_for_the_page(demo, image, task, text, drawing, layers):
    answer = demo.answer(Session(), Request(image, layers, task, text, drawing, threshold=0.0))
    assert answer.prediction.task == task
    assert answer.picture.size[0] == SIZE[1]
    assert len(answer.rows) == len(answer.prediction.masks)
    assert all(len(row) == 4 for row in answer.rows)
    assert set(answer.colours) == set(answer.prediction.labels)
    assert f"**task:** {task}" in answer.status
    assert answer.result["task"] == task and "annotations" in answer.result


@pytest.mark.parametrize(
    "text, layers, routed",
    [
        ("ins: a; sem: b", [], "generic"),
        ("", [layer((slice(20, 24), slice(20, 24)))], "interactive"),
        ("", [], "gcg"),
        ("What colour is the sky?", [], "chat"),
        ("the red car", [], "referring"),
    ],
)
def test_auto_routes_and_says_so(demo, image, text, layers, routed):
    answer = demo.answer(Session(), Request(image, layers, AUTO, text))
    assert answer.prediction.task == routed
    assert f"**task:** {routed} (chosen from the prompt)" in answer.status


def test_the_session_reuses_its_encoding_until_the_image_changes(demo, image):
    session = Session()
    first = demo.answer(session, Request(image, [], "referring", "a"))
    second = demo.answer(session, Request(image, [], "referring", "b"))
    other = demo.answer(session, Request(255 - image, [], "referring", "a"))
    assert (first.reused, second.reused, other.reused) == (False, True, False)
    assert "reused the cached image encoding" in second.status
    assert "encoded the image in" in first.status
    assert demo.predictor.stats.image_encodings == 2
    assert demo.predictor.encoding is None  # between requests only the session holds it


def test_sessions_do_not_share_encodings_or_chats(demo, image):
    mine, theirs = Session(), Session()
    demo.answer(mine, Request(image, [], "chat", "hello"))
    answer = demo.answer(theirs, Request(image, [], "chat", "hello"))
    assert not answer.reused and len(mine.chat) == len(theirs.chat) == 1


def test_chat_keeps_its_history_and_a_new_image_starts_a_new_chat(demo, image, monkeypatch):
    seen = []
    predict = demo.predictor.predict

    def spy(**arguments):
        seen.append(list(arguments.get("history") or []))
        return predict(**arguments)

    monkeypatch.setattr(demo.predictor, "predict", spy)
    session = Session()
    first = demo.answer(session, Request(image, [], "chat", "What is this?"))
    demo.answer(session, Request(image, [], "chat", "And then?"))
    assert seen == [[], [("What is this?", first.prediction.text)]]
    assert [question for question, _ in session.chat] == ["What is this?", "And then?"]
    demo.answer(session, Request(255 - image, [], "chat", "Hi"))
    assert [question for question, _ in session.chat] == ["Hi"]


@pytest.mark.parametrize(
    "request_, says",
    [
        (Request(None), "upload an image first"),
        (Request(np.zeros((0, 4, 3), dtype=np.uint8)), "empty"),
        (Request(np.zeros((*SIZE, 3), dtype=np.uint8), task="generic"), "needs categories"),
        (Request(np.zeros((*SIZE, 3), dtype=np.uint8), task="segment-all"), "unknown task"),
        (Request(np.zeros((*SIZE, 3), dtype=np.uint8), task="interactive"), "interactive"),
        (Request(np.zeros((*SIZE, 3), dtype=np.uint8), task="referring"), "text"),
        (Request(np.zeros((*SIZE, 3), dtype=np.uint8), task="referring", text="a", threshold=3), "threshold"),
    ],
)
def test_bad_requests_are_messages_for_the_page(demo, request_, says):
    with pytest.raises(DemoError) as refused:
        demo.answer(Session(), request_)
    assert says in str(refused.value)


def test_scripts_give_points_as_coordinates(demo, image):
    answer = demo.answer(Session(), Request(image, task="interactive", prompts={"points": [[10, 10]]}))
    assert answer.prediction.task == "interactive" and len(answer.rows) == 1


def test_caption_spans_mark_each_phrase_in_order():
    prediction = Prediction(
        "gcg",
        torch.zeros((2, 4, 4), dtype=torch.bool),
        ["a dog", "the grass"],
        [0.9, 0.8],
        phrases=["a dog", "the grass"],
        text="There is a dog on the grass.",
    )
    assert caption_spans(prediction) == [
        ("There is ", None),
        ("a dog", "a dog"),
        (" on ", None),
        ("the grass", "the grass"),
        (".", None),
    ]


def test_the_vocabulary_is_offered_in_the_prompt_syntax(tiny_model):
    assert Demo(XSamPredictor(tiny_model), "tiny").vocabulary_text() == ""
    default = Demo(XSamPredictor(XSamModel.from_pretrained("default")), "default")
    text = default.vocabulary_text()
    assert text.startswith("ins: circle, square") and "; sem: sky, grass" in text


def test_a_chat_too_long_for_the_context_drops_its_oldest_turns(demo, image):
    session = Session()
    demo.answer(session, Request(image, [], "chat", "hi", max_new_tokens=2))
    session.chat = [(f"question {i} " + "word " * 40, "answer " * 40) for i in range(8)]
    answer = demo.answer(session, Request(image, [], "chat", "and now?", max_new_tokens=2))
    assert answer.prediction.task == "chat" and answer.reused
    assert session.chat[-1][0] == "and now?"  # answered, with the turns that fit


def test_auto_after_a_chat_sends_the_history_to_chats_only(demo, image):
    session = Session()
    demo.answer(session, Request(image, [], AUTO, "What is this?", max_new_tokens=2))
    clicked = demo.answer(session, Request(image, [layer((slice(20, 24), slice(20, 24)))], AUTO))
    assert clicked.prediction.task == "interactive" and clicked.reused
    again = demo.answer(session, Request(image, [], AUTO, "And this?", max_new_tokens=2))
    assert again.prediction.task == "chat" and len(session.chat) == 2
