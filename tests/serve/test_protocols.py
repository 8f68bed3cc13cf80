"""The annotation tools' protocols on the bundled default model: requests shaped as X-AnyLabeling and
Label Studio send them, masks decoded back and compared with the native API's answer to the same
prompt."""

import http.server
import threading
from typing import ClassVar

import numpy as np
import pytest

from serving import EXAMPLE_IMAGE, base64_of, decode_brush, label_studio_decoder
from xsam.processing import decode_rle
from xsam.serve.masks import polygons_to_mask

IMAGE = EXAMPLE_IMAGE.read_bytes()
DATA_URL = "data:image/jpeg;base64," + base64_of(IMAGE)
SIZE = 256  # the example image is 256 x 256
HEXAGON = (78, 115)  # a point on the large red hexagon
HEXAGON_BOX = (43, 90, 120, 161)
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="hexagon" background="red"/>
    <Label value="circle" background="blue"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="hexagon" smart="true" background="red"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="hexagon" background="red"/>
  </RectangleLabels>
  <TextArea name="prompt" toName="image" editable="true"/>
</View>"""


def native_masks(client, **prompt) -> list[np.ndarray]:
    response = client.post("/v1/predict", json={"image": base64_of(IMAGE), **prompt})
    assert response.status_code == 200, response.text
    return [decode_rle(instance["rle"]) for instance in response.json()["instances"]]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------------------------- X-AnyLabeling
def x_predict(client, params: dict) -> dict:
    body = {"model": "default", "image": DATA_URL, "params": {"conf_threshold": 0.5, **params}}
    response = client.post("/x-anylabeling/v1/predict", json=body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True, reply
    return reply["data"]


def rasterised(shapes: list[dict]) -> dict[int, np.ndarray]:
    """The polygons of each group filled back into one mask per group."""
    groups: dict[int, list] = {}
    for shape in shapes:
        assert shape["shape_type"] == "polygon" and len(shape["points"]) >= 3
        groups.setdefault(shape["group_id"], []).append(shape["points"])
    return {group: polygons_to_mask(polygons, (SIZE, SIZE)) for group, polygons in groups.items()}


def test_x_anylabeling_health_models_and_info(default_client):
    health = default_client.get("/x-anylabeling/health").json()
    assert health["status"] == "healthy" and health["models_loaded"] == 1 and health["timestamp"]
    models = default_client.get("/x-anylabeling/v1/models").json()
    assert models["success"] and set(models["data"]) == {"default"}
    entry = models["data"]["default"]
    for key in ("display_name", "widgets", "params", "capabilities", "batch_processing_mode"):
        assert key in entry
    tasks = {task["id"]: task for task in entry["available_tasks"]}
    assert {"auto", "interactive", "generic", "referring", "reasoning", "gcg", "vgd", "chat"} <= set(tasks)
    for task in tasks.values():
        assert set(task) == {"id", "name", "description", "batch_processing_mode", "active_widgets"}
    info = default_client.get("/x-anylabeling/v1/models/default/info").json()
    assert info["success"] and info["data"]["model_id"] == "default"


@pytest.mark.parametrize(
    "marks, native",
    [
        (
            [{"type": "point", "data": list(HEXAGON), "label": 1}],
            {"task": "interactive", "points": [HEXAGON]},
        ),
        (
            [{"type": "rectangle", "data": list(HEXAGON_BOX), "label": 1}],
            {"task": "interactive", "boxes": [HEXAGON_BOX]},
        ),
    ],
)
def test_x_anylabeling_marks_polygons_match_the_native_mask(default_client, marks, native):
    data = x_predict(default_client, {"marks": marks, "current_task": "interactive"})
    (expected,) = native_masks(default_client, **native)
    (mask,) = rasterised(data["shapes"]).values()
    assert expected.sum() > 500  # the hexagon, not an empty answer
    assert iou(mask, expected) >= 0.98


def test_x_anylabeling_text_prompts_match_the_native_masks(default_client):
    data = x_predict(default_client, {"text_prompt": "the large red hexagon", "current_task": "referring"})
    (expected,) = native_masks(default_client, task="referring", text="the large red hexagon")
    (mask,) = rasterised(data["shapes"]).values()
    assert iou(mask, expected) >= 0.98
    assert {shape["label"] for shape in data["shapes"]} == {"the large red hexagon"}


def test_x_anylabeling_generic_groups_every_instance(default_client):
    data = x_predict(default_client, {"text_prompt": "circle, square, hexagon", "current_task": "generic"})
    expected = native_masks(
        default_client, task="generic", categories="ins: circle, square, hexagon", threshold=0.5
    )
    masks = rasterised(data["shapes"])
    assert len(masks) == len(expected) >= 1
    for group, mask in masks.items():
        assert iou(mask, expected[group]) >= 0.98


def test_x_anylabeling_gcg_and_chat_text_go_in_the_description(default_client):
    gcg = x_predict(default_client, {"current_task": "gcg"})
    assert gcg["description"] and gcg["replace"] is False
    assert gcg["shapes"], "the default model grounds phrases in its caption"
    for shape in gcg["shapes"]:
        assert shape["description"] in gcg["description"]  # each mask's phrase, quoted from the caption
    chat = x_predict(default_client, {"text_prompt": "How many shapes are there?", "current_task": "chat"})
    assert chat["description"] and chat["shapes"] == []


@pytest.mark.parametrize(
    "body, code",
    [
        ({"model": "other", "image": DATA_URL, "params": {}}, "MODEL_NOT_FOUND"),
        ({"model": "default", "image": "data:image/png;base64,%%%", "params": {}}, "INVALID_IMAGE"),
        ({"model": "default", "image": DATA_URL, "params": {"current_task": "dance"}}, "INVALID_REQUEST"),
        (
            {"model": "default", "image": DATA_URL, "params": {"marks": [{"type": "polygon", "data": [1]}]}},
            "INVALID_REQUEST",
        ),
        (
            {
                "model": "default",
                "image": DATA_URL,
                "params": {"marks": [{"type": "point", "data": [9, 9], "label": 0}]},
            },
            "INVALID_REQUEST",
        ),
        ({"model": "default", "params": {}}, "INVALID_REQUEST"),
    ],
)
def test_x_anylabeling_errors_are_success_false(default_client, body, code):
    response = default_client.post("/x-anylabeling/v1/predict", json=body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["success"] is False and reply["error"]["code"] == code and reply["error"]["message"]


# ----------------------------------------------------------------------------------- Label Studio
def brush_mask(item: dict) -> np.ndarray:
    value = item["value"]
    assert value["format"] == "rle" and item["type"] == "brushlabels"
    rgba = decode_brush(value["rle"]).reshape(item["original_height"], item["original_width"], 4)
    return rgba[:, :, 3] > 0


def ls_predict(client, context: dict | None = None, data: dict | None = None) -> dict:
    body = {
        "tasks": [{"id": 7, "data": data or {"image": DATA_URL}}],
        "model_version": "default",
        "project": "1.1700000000",
        "label_config": LABEL_CONFIG,
        "params": {"login": None, "password": None, "context": context},
    }
    response = client.post("/label-studio/predict", json=body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["model_version"] == "default"
    return result


def keypoint_context(x: float, y: float) -> dict:
    return {
        "result": [
            {
                "original_width": SIZE,
                "original_height": SIZE,
                "image_rotation": 0,
                "value": {
                    "x": 100 * x / SIZE,
                    "y": 100 * y / SIZE,
                    "width": 0.5,
                    "keypointlabels": ["hexagon"],
                },
                "is_positive": True,
                "id": "kp1",
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
            }
        ]
    }


def test_label_studio_health_setup_webhook_metrics(default_client):
    for path in ("/label-studio/health", "/label-studio/"):
        assert default_client.get(path).json() == {"status": "UP", "model_class": "XSam"}
    setup = default_client.post(
        "/label-studio/setup", json={"project": "1.1", "schema": LABEL_CONFIG, "extra_params": ""}
    )
    assert setup.json() == {"model_version": "default"}
    assert (
        default_client.post("/label-studio/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 200
    )
    assert default_client.get("/label-studio/metrics").json() == {}


def test_label_studio_keypoint_brush_rle_is_exactly_the_native_mask(default_client):
    result = ls_predict(default_client, keypoint_context(*HEXAGON))
    (item,) = result["result"]
    (expected,) = native_masks(default_client, task="interactive", points=[HEXAGON])
    assert (item["from_name"], item["to_name"], item["image_rotation"]) == ("tag", "image", 0)
    assert item["value"]["brushlabels"] == ["hexagon"]
    np.testing.assert_array_equal(brush_mask(item), expected)


def test_label_studio_brush_rle_decodes_exactly_with_the_sdk(default_client):
    brush = label_studio_decoder()
    result = ls_predict(default_client, keypoint_context(*HEXAGON))
    (item,) = result["result"]
    (expected,) = native_masks(default_client, task="interactive", points=[HEXAGON])
    decoded = np.asarray(brush.decode_rle(item["value"]["rle"])).reshape(SIZE, SIZE, 4)
    np.testing.assert_array_equal(decoded[:, :, 3] > 0, expected)
    np.testing.assert_array_equal(decoded, np.repeat(expected[:, :, None].astype(np.uint8) * 255, 4, axis=2))


def test_label_studio_rectangle_and_text_contexts(default_client):
    x0, y0, x1, y1 = HEXAGON_BOX
    rectangle = {
        "result": [
            {
                "original_width": SIZE,
                "original_height": SIZE,
                "value": {
                    "x": 100 * x0 / SIZE,
                    "y": 100 * y0 / SIZE,
                    "width": 100 * (x1 - x0) / SIZE,
                    "height": 100 * (y1 - y0) / SIZE,
                    "rectanglelabels": ["hexagon"],
                },
                "type": "rectanglelabels",
                "from_name": "rect",
                "to_name": "image",
            }
        ]
    }
    (item,) = ls_predict(default_client, rectangle)["result"]
    (expected,) = native_masks(default_client, task="interactive", boxes=[HEXAGON_BOX])
    assert iou(brush_mask(item), expected) >= 0.98  # percent coordinates round-trip within a pixel
    text = {
        "result": [{"type": "textarea", "value": {"text": ["the large red hexagon"]}, "from_name": "prompt"}]
    }
    (item,) = ls_predict(default_client, text)["result"]
    (expected,) = native_masks(default_client, text="the large red hexagon")
    np.testing.assert_array_equal(brush_mask(item), expected)


def test_label_studio_without_context_pre_annotates_the_config_labels(default_client):
    result = ls_predict(default_client)
    expected = native_masks(default_client, task="generic", categories=["hexagon", "circle"])
    assert len(result["result"]) == len(expected) >= 1
    for item, mask in zip(result["result"], expected, strict=True):
        np.testing.assert_array_equal(brush_mask(item), mask)
        assert item["value"]["brushlabels"][0] in ("hexagon", "circle")
    assert 0 <= result["score"] <= 1


def test_label_studio_local_files_need_the_files_root(client_factory, tmp_path, image_png):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.png").write_bytes(image_png)
    body = {"tasks": [{"id": 1, "data": {"image": "pictures/a.png"}}], "label_config": LABEL_CONFIG}
    without = client_factory().post("/label-studio/predict", json=body)
    assert without.status_code == 400 and "--files-root" in without.json()["error"]["message"]
    client = client_factory(files_root=tmp_path)
    assert client.post("/label-studio/predict", json=body).status_code == 200
    escape = dict(body, tasks=[{"id": 2, "data": {"image": "../outside.png"}}])
    assert client.post("/label-studio/predict", json=escape).status_code == 404


class _Uploads(http.server.BaseHTTPRequestHandler):
    """A stand-in for Label Studio's upload route: serves one image to the right token only."""

    image = b""
    seen: ClassVar[list] = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Token ls-token" or not self.path.startswith("/data/upload/"):
            self.send_response(403)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args):
        pass


def test_label_studio_uploads_are_fetched_from_label_studio_url(client_factory, monkeypatch, image_png):
    _Uploads.image, _Uploads.seen = image_png, []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Uploads)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        client = client_factory()
        body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}], "label_config": LABEL_CONFIG}
        unset = client.post("/label-studio/predict", json=body)
        assert unset.status_code == 400 and "LABEL_STUDIO_URL" in unset.json()["error"]["message"]
        monkeypatch.setenv("LABEL_STUDIO_URL", base)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "ls-token")
        assert client.post("/label-studio/predict", json=body).status_code == 200
        assert _Uploads.seen[-1] == ("/data/upload/1/a.png", "Token ls-token")
        elsewhere = dict(body, tasks=[{"id": 2, "data": {"image": "http://example.invalid/a.png"}}])
        refused = client.post("/label-studio/predict", json=elsewhere)
        assert (
            refused.status_code == 400
            and "only images of LABEL_STUDIO_URL" in refused.json()["error"]["message"]
        )
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
        forbidden = client.post("/label-studio/predict", json=body)
        assert forbidden.status_code == 400 and "403" in forbidden.json()["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "label_config, says",
    [
        ("<View", "not valid XML"),
        ('<View><Image name="image" value="$image"/></View>', "BrushLabels"),
    ],
)
def test_label_studio_configs_without_brush_labels_are_refused(client, label_config, says):
    for response in (
        client.post("/label-studio/setup", json={"project": 1, "schema": label_config}),
        client.post(
            "/label-studio/predict",
            json={"tasks": [{"id": 1, "data": {"image": DATA_URL}}], "label_config": label_config},
        ),
    ):
        assert response.status_code == 400 and says in response.json()["error"]["message"]
