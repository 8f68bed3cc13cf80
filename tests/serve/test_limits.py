"""The server's bounds: API key (401), body and pixel caps (413), a full queue (503 with Retry-After),
timeouts (504), and the image cache held under its byte budget."""

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import base64_of, png_of
from xsam.serve import create_app
from xsam.serve.worker import ImageCache, JobExpired, ModelWorker, QueueFull


def error_of(response) -> dict:
    assert "Traceback" not in response.text
    return response.json()["error"]


# ------------------------------------------------------------------------------------------- keys
def test_a_missing_or_wrong_key_is_401_everywhere_but_health_and_docs(client_factory, image_png):
    client = client_factory(api_key="s3cret")
    for path in ("/v1/models", "/x-anylabeling/v1/models", "/label-studio/setup"):
        method = client.post if path.endswith("setup") else client.get
        missing = method(path)
        assert missing.status_code == 401, path
        wrong = method(path, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401, path
    assert error_of(client.get("/v1/models"))["code"] == "unauthorized"
    assert client.get("/v1/models").headers["www-authenticate"] == "Bearer"
    assert client.get("/x-anylabeling/v1/models").json()["success"] is False
    for path in (
        "/health",
        "/ready",
        "/x-anylabeling/health",
        "/label-studio/health",
        "/openapi.json",
        "/docs",
    ):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Token s3cret"},
        {"X-API-Key": "s3cret"},
        {"Token": "s3cret"},  # X-AnyLabeling
        {"Authorization": "Basic dXNlcjpzM2NyZXQ="},  # Label Studio: user:s3cret
    ],
)
def test_the_key_in_every_accepted_header(client_factory, headers):
    assert client_factory(api_key="s3cret").get("/v1/models", headers=headers).status_code == 200


def test_malformed_basic_auth_is_401_not_500(client_factory):
    client = client_factory(api_key="s3cret")
    assert client.get("/v1/models", headers={"Authorization": "Basic %%%"}).status_code == 401
    predict = client.post("/v1/predict", json={"image_id": "x", "text": "x"})
    assert predict.status_code == 401  # refused before the body is read


# ----------------------------------------------------------------------------------------- sizes
def test_a_body_over_the_limit_is_413_declared_or_streamed(client_factory, image_png):
    client = client_factory(max_body_bytes=1000)
    declared = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")})
    assert declared.status_code == 413 and error_of(declared)["code"] == "body_too_large"
    assert "1,000 bytes" in error_of(declared)["message"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for start in range(0, len(image_png), 500):
            yield image_png[start : start + 500]

    streamed = client.post("/v1/images", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "body_too_large"


def test_an_image_over_the_pixel_limit_is_413(client_factory, image_png):
    client = client_factory(max_image_pixels=1000)  # the image has 48 x 64 = 3072
    response = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")})
    assert response.status_code == 413
    assert error_of(response)["code"] == "image_too_large"
    assert "3,072" in error_of(response)["message"] or "3072" in error_of(response)["message"]
    inline = client.post("/v1/predict", json={"image": base64_of(image_png), "text": "x"})
    assert inline.status_code == 413


# --------------------------------------------------------------------------------- queue and time
def block(service) -> threading.Event:
    """Occupy the model worker until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    service.worker.submit(hold, timeout=60)
    assert started.wait(10)
    return release


def test_a_full_queue_is_503_with_retry_after_and_then_recovers(service_factory, image_png):
    service = service_factory(queue_size=2)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    release = block(service)
    waiting = [service.worker.submit(lambda: "done", timeout=60) for _ in range(2)]
    started = time.perf_counter()
    response = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")})
    assert response.status_code == 503 and time.perf_counter() - started < 2
    assert error_of(response)["code"] == "busy"
    assert int(response.headers["retry-after"]) >= 1
    release.set()
    assert [future.result(10) for future in waiting] == ["done", "done"]
    again = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")})
    assert again.status_code == 200


def test_a_request_past_its_timeout_is_504(service_factory, image_png):
    service = service_factory(timeout=0.3)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    release = block(service)
    try:
        response = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")})
    finally:
        release.set()
    assert response.status_code == 504 and error_of(response)["code"] == "timeout"
    assert "0.3 s" in error_of(response)["message"]


def test_the_worker_drops_jobs_that_waited_past_their_deadline():
    worker = ModelWorker(queue_size=4)
    release = threading.Event()
    worker.submit(lambda: release.wait(10), timeout=60)
    late = worker.submit(lambda: "ran", timeout=0.05)
    time.sleep(0.2)
    release.set()
    with pytest.raises(JobExpired):
        late.result(10)
    assert worker.submit(lambda: "ran", timeout=10).result(10) == "ran"
    worker.close()


def test_the_worker_refuses_beyond_its_queue():
    worker = ModelWorker(queue_size=1)
    release = threading.Event()
    worker.submit(lambda: release.wait(10), timeout=60)
    time.sleep(0.1)  # the first job is running; the queue is empty
    worker.submit(lambda: None, timeout=60)
    with pytest.raises(QueueFull) as refused:
        worker.submit(lambda: None, timeout=60)
    assert refused.value.retry_after >= 1
    release.set()
    worker.close()


# ------------------------------------------------------------------------------------------ cache
def encoding_bytes(service, data: bytes) -> int:
    """What one image of ``data`` costs the cache."""
    _, encoding, _, _ = service.worker.submit(lambda: service.encode(data), timeout=30).result(30)
    return encoding.nbytes + encoding.image.width * encoding.image.height * 3


def test_the_cache_never_exceeds_its_byte_budget(service_factory, client_factory):
    images = [png_of(np.full((48, 64, 3), shade, dtype=np.uint8)) for shade in range(0, 250, 25)]
    probe = service_factory()
    size = encoding_bytes(probe, images[0])
    budget = int(2.5 * size)  # room for two encodings, not three
    client = client_factory(cache_bytes=budget)
    service = client.app.state.service
    ids = []
    for data in images:
        response = client.post("/v1/images", files={"file": ("a.png", data, "image/png")})
        assert response.status_code == 200
        ids.append(response.json()["image_id"])
        assert service.cache.nbytes <= budget
        assert len(service.cache) <= 2
    assert client.post("/v1/predict", json={"image_id": ids[-1], "text": "x"}).status_code == 200
    evicted = client.post("/v1/predict", json={"image_id": ids[0], "text": "x"})
    assert evicted.status_code == 404 and "evicted" in error_of(evicted)["message"]


def test_an_image_larger_than_the_cache_is_answered_but_not_kept(client_factory, image_png):
    client = client_factory(cache_bytes=1000)
    info = client.post("/v1/images", files={"file": ("a.png", image_png, "image/png")}).json()
    assert info["cached"] is False
    assert client.post("/v1/predict", json={"image_id": info["image_id"], "text": "x"}).status_code == 404
    inline = client.post("/v1/predict", json={"image": base64_of(image_png), "text": "x"})
    assert inline.status_code == 200 and inline.json()["timing"]["cached"] is False
    assert client.app.state.service.cache.nbytes == 0


def test_the_cache_evicts_least_recently_used_first(service_factory):
    service = service_factory()
    encodings = []
    for shade in (10, 20, 30):
        data = png_of(np.full((16, 16, 3), shade, dtype=np.uint8))
        encodings.append(service.worker.submit(lambda d=data: service.encode(d), timeout=30).result(30)[1])
    size = encodings[0].nbytes + 16 * 16 * 3
    cache = ImageCache(2 * size)
    cache.put("a", encodings[0])
    cache.put("b", encodings[1])
    assert cache.get("a") is encodings[0]  # "b" is now the least recently used
    cache.put("c", encodings[2])
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 2 * size
    assert cache.remove("a") and not cache.remove("a")
    assert cache.nbytes == size
