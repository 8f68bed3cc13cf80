"""The native API under /v1 and the health routes, through an in-process client: every route, every
error status, and the mask encodings decoded back."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving import base64_of, png_of
from xsam.processing import decode_rle, encode_rle


def upload(client, data: bytes) -> dict:
    response = client.post("/v1/images", files={"file": ("image.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, code: str, *, says: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert says in error["message"]
    assert "Traceback" not in response.text
    return error


def test_health_ready_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["model"] == "tiny"
    (model,) = client.get("/v1/models").json()["models"]
    assert model["id"] == "tiny" and model["preset"] == "tiny"
    assert model["tasks"][0] == "auto" and "interactive" in model["tasks"]
    assert (model["dtype"], model["device"]) == ("float32", "cpu")


def test_upload_multipart_and_json_give_the_same_content_id(client, image_png):
    first = upload(client, image_png)
    assert (first["width"], first["height"], first["cached"]) == (64, 48, True)
    second = client.post("/v1/images", json={"image": base64_of(image_png)}).json()
    data_url = client.post("/v1/images", json={"image": "data:image/png;base64," + base64_of(image_png)})
    assert first["image_id"] == second["image_id"] == data_url.json()["image_id"]


def test_predict_by_id_reuses_the_encoding(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    body = {"image_id": image_id, "task": "interactive", "points": [[20, 20]]}
    answer = client.post("/v1/predict", json=body).json()
    assert answer["task"] == "interactive" and answer["model"] == "tiny"
    assert answer["timing"]["cached"] and answer["timing"]["encode_ms"] == 0.0
    (instance,) = answer["instances"]
    mask = decode_rle(instance["rle"])
    assert mask.shape == (48, 64) and instance["area"] == int(mask.sum())


def test_predict_inline_image_is_encoded_then_cached(client, image_png):
    body = {"image": base64_of(image_png), "task": "referring", "text": "the thing"}
    first = client.post("/v1/predict", json=body).json()
    second = client.post("/v1/predict", json=body).json()
    assert not first["timing"]["cached"] and first["timing"]["encode_ms"] > 0
    assert second["timing"]["cached"] and second["timing"]["encode_ms"] == 0.0


def test_a_list_of_prompts_shares_one_encoding_and_keeps_its_order(client, image_png):
    image = base64_of(image_png)
    other = base64_of(png_of(np.full((32, 32, 3), 90, dtype=np.uint8)))
    bodies = [
        {"image": image, "task": "referring", "text": "a"},
        {"image": other, "task": "interactive", "boxes": [[2, 2, 20, 20]]},
        {"image": image, "task": "interactive", "points": [[5, 5]]},
    ]
    answers = client.post("/v1/predict", json=bodies).json()
    assert [a["task"] for a in answers] == ["referring", "interactive", "interactive"]
    assert [a["timing"]["cached"] for a in answers] == [False, False, True]
    assert decode_rle(answers[1]["instances"][0]["rle"]).shape == (32, 32)


def test_outputs_polygons_png_and_the_semantic_id_map(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    body = {
        "image_id": image_id,
        "task": "generic",
        "categories": "sem: c, d",
        "outputs": ["rle", "polygons", "png"],
    }
    answer = client.post("/v1/predict", json=body).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["png"])))
    assert overlay.size == (64, 48)
    ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["semantic"]))))
    assert ids.shape == (48, 64)
    assert answer["instances"], "semantic segmentation labels every pixel"
    assert (ids > 0).all()
    for instance in answer["instances"]:
        mask = decode_rle(instance["rle"])
        np.testing.assert_array_equal(ids == instance["id"] + 1, mask)
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(instance["png"])))) > 0
        np.testing.assert_array_equal(png, mask)
        assert instance["polygons"] is not None


def test_mask_prompts_as_rle_and_png(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    region = np.zeros((48, 64), dtype=bool)
    region[10:30, 20:40] = True
    for wire in (encode_rle(region), base64_of(png_of(region.astype(np.uint8) * 255))):
        body = {"image_id": image_id, "task": "interactive", "masks": [wire]}
        response = client.post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["instances"]) == 1


def test_auto_routes_by_the_prompt(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    routed = {
        "interactive": {"points": [[3, 3]]},
        "generic": {"categories": "ins: a; sem: b"},
        "referring": {"text": "the red car"},
    }
    for task, prompt in routed.items():
        answer = client.post("/v1/predict", json={"image_id": image_id, **prompt}).json()
        assert answer["task"] == task


def test_chat_with_history(client, image_png):
    body = {
        "image": base64_of(image_png),
        "messages": [
            {"role": "user", "content": "What is this?"},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": "Of what?"},
        ],
        "max_new_tokens": 4,
    }
    answer = client.post("/v1/chat", json=body).json()
    assert isinstance(answer["text"], str) and answer["model"] == "tiny"


@pytest.mark.parametrize(
    "messages, says",
    [
        ([{"role": "assistant", "content": "hi"}], "last message"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        (
            [
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "b"},
            ],
            "follow a user",
        ),
    ],
)
def test_chat_refuses_broken_histories(client, image_png, messages, says):
    response = client.post("/v1/chat", json={"image": base64_of(image_png), "messages": messages})
    assert_error(response, 422, "invalid_request", says=says)


def test_delete_then_the_id_is_unknown(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert_error(client.delete(f"/v1/images/{image_id}"), 404, "unknown_image")
    response = client.post("/v1/predict", json={"image_id": image_id, "text": "x"})
    assert_error(response, 404, "unknown_image", says=image_id)


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"task": "referring", "text": "x"}, 422, "exactly one of image_id and image"),
        ({"image": "###", "text": "x"}, 400, "not valid base64"),
        ({"image": base64_of(b"not an image"), "text": "x"}, 400, "cannot"),
        ({"image_id": "x", "task": "segment-all"}, 422, "task"),
        ({"image_id": "x", "threshold": 2}, 422, "threshold"),
        ({"image_id": "x", "surprise": 1}, 422, "surprise"),
        ({"image_id": "x", "points": [[1, 2, 3]]}, 422, "points"),
    ],
)
def test_bad_predict_requests_are_named(client, body, status, says):
    error = assert_error(client.post("/v1/predict", json=body), status, "invalid_request")
    assert says.lower() in error["message"].lower()


def test_prompts_the_task_cannot_take_are_400(client, image_png):
    image_id = upload(client, image_png)["image_id"]
    cases = [
        ({"task": "referring"}, "text"),
        ({"task": "interactive", "points": [[500, 500]]}, "outside"),
        ({"task": "interactive", "masks": [encode_rle(np.ones((5, 5), dtype=bool))]}, "masks[0]"),
        ({"task": "interactive", "masks": [{"size": [48, 64], "counts": "@@@"}]}, "masks[0]"),
        ({"task": "generic", "categories": "ins: ;"}, "categor"),
    ]
    for prompt, says in cases:
        response = client.post("/v1/predict", json={"image_id": image_id, **prompt})
        error = assert_error(response, 400, "invalid_request")
        assert says.lower() in error["message"].lower(), (prompt, error)


def test_uploads_that_are_not_images(client):
    assert_error(
        client.post("/v1/images", files={"file": ("x.png", b"\x89PNG broken", "image/png")}),
        400,
        "invalid_request",
    )
    assert_error(client.post("/v1/images", files={"other": ("x", b"1")}), 400, "invalid_request", says="file")
    assert_error(
        client.post("/v1/images", content=b"{", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    assert_error(client.post("/v1/images", json={"picture": "x"}), 422, "invalid_request")


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


def test_openapi_documents_every_native_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/health",
        "/ready",
        "/v1/models",
        "/v1/images",
        "/v1/images/{image_id}",
        "/v1/predict",
        "/v1/chat",
    ):
        assert path in paths
    upload_body = paths["/v1/images"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(upload_body)
    assert client.get("/docs").status_code == 200


def test_cached_answers_equal_fresh_ones(client_factory, image_png):
    """Reusing an encoding (and its language-model prefix) changes nothing: a chat answer and a mask
    from the cache equal those of a server that encodes the image for the first time."""
    prompts = [
        {"task": "chat", "text": "Describe it.", "max_new_tokens": 6},
        {"task": "referring", "text": "the left part"},
        {"task": "chat", "text": "Describe it.", "max_new_tokens": 6},
    ]
    warm = client_factory()
    image_id = upload(warm, image_png)["image_id"]
    cached = [warm.post("/v1/predict", json={"image_id": image_id, **prompt}).json() for prompt in prompts]
    for prompt, answer in zip(prompts, cached, strict=True):
        fresh = client_factory().post("/v1/predict", json={"image": base64_of(image_png), **prompt}).json()
        assert answer["timing"]["cached"] and not fresh["timing"]["cached"]
        assert answer["text"] == fresh["text"]
        assert [i["rle"] for i in answer["instances"]] == [i["rle"] for i in fresh["instances"]]
