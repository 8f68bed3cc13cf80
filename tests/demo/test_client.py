"""``gradio_client`` against the demo on loopback: every named endpoint, one request per task, the
encoding reused on a second prompt, chat history kept until a new chat."""

import json

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from serving import EXAMPLE_IMAGE

HEXAGON = [78, 115]
ENDPOINTS = {"/run", "/new_chat", "/remove_drawings", "/categories", "/segment"}


@pytest.fixture(scope="module")
def client(demo_url) -> Client:
    return Client(demo_url, verbose=False)


def editor(path=EXAMPLE_IMAGE, layers=()) -> dict:
    image = handle_file(str(path))
    return {
        "background": image,
        "layers": [handle_file(str(p)) for p in layers],
        "composite": image,
        "id": None,
    }


def run(client: Client, task: str, text: str = "", layers=(), kind: str = "points") -> tuple:
    return client.predict(editor(layers=layers), task, text, kind, 0.5, True, api_name="/run")


def rows(result: tuple) -> list:
    return result[4]["data"]


def test_every_action_is_a_named_endpoint(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) >= ENDPOINTS


@pytest.mark.parametrize(
    "task, text",
    [
        ("generic", "ins: circle, square, triangle, star, hexagon, cross; sem: sky, grass"),
        ("open_vocab", "ins: red hexagon; sem: grass"),
        ("referring", "the large red hexagon"),
        ("reasoning", "the shape that looks like a honeycomb cell"),
        ("gcg", ""),
        ("chat", "How many shapes are there?"),
    ],
)
def test_run_answers_each_task(client, task, text):
    status, picture, caption, chat, instances, downloads = run(client, task, text)
    assert f"**task:** {task}" in status
    assert picture.endswith(".png")
    names = sorted(path.rsplit("/", 1)[-1] for path in downloads)
    assert names == ["overlay.png", "result.json"]
    with open(next(path for path in downloads if path.endswith(".json"))) as handle:
        result = json.load(handle)
    assert result["task"] == task and len(result["annotations"]) == len(instances["data"])
    if task == "gcg":
        assert caption["visible"] and caption["value"]
    if task == "chat":
        assert chat["visible"] and chat["value"][-1]["role"] == "assistant"


def test_drawn_prompts_from_layer_images(client, tmp_path):
    layer = Image.new("RGBA", Image.open(EXAMPLE_IMAGE).size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).ellipse((73, 110, 83, 120), fill=(45, 140, 255, 255))
    layer.save(tmp_path / "dot.png")
    for task in ("interactive", "vgd"):
        result = run(client, task, layers=[tmp_path / "dot.png"])
        assert f"**task:** {task}" in result[0] and len(rows(result)) >= 1
    auto = run(client, "auto", layers=[tmp_path / "dot.png"])
    assert "**task:** interactive (chosen from the prompt)" in auto[0]


def test_the_encoding_is_reused_and_chat_keeps_its_history_until_a_new_chat(demo_url):
    client = Client(demo_url, verbose=False)  # a session of its own
    first = run(client, "referring", "the hexagon")
    second = run(client, "chat", "How many shapes are there?")
    third = run(client, "chat", "And how many hexagons?")
    assert "encoded the image" in first[0] and "reused the cached image encoding" in second[0]
    assert "reused the cached image encoding" in third[0]
    messages = third[3]["value"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"][0]["text"] == "How many shapes are there?"
    chat, status = client.predict(api_name="/new_chat")
    assert chat["value"] == [] and "new chat" in status
    after = run(client, "chat", "Hello?")
    assert len(after[3]["value"]) == 2


def test_categories_remove_drawings_and_segment(client):
    assert client.predict(api_name="/categories").startswith("ins: circle")
    cleared = client.predict(editor(layers=[EXAMPLE_IMAGE]), api_name="/remove_drawings")
    assert cleared["layers"] == [] and cleared["background"]
    image, points = handle_file(str(EXAMPLE_IMAGE)), json.dumps([HEXAGON])
    result = client.predict(image, "interactive", "", points, "", 0.5, api_name="/segment")
    assert result["task"] == "interactive" and len(result["annotations"]) == 1


def test_errors_reach_the_client_as_messages(client):
    with pytest.raises(AppError, match="needs categories"):
        run(client, "generic", "")
    with pytest.raises(AppError, match="upload an image first"):
        client.predict(None, "referring", "x", "points", 0.5, True, api_name="/run")
    with pytest.raises(AppError, match="JSON"):
        client.predict(
            handle_file(str(EXAMPLE_IMAGE)), "interactive", "", "[[1, 2", "", 0.5, api_name="/segment"
        )
