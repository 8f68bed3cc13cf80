"""The server for real: ``xsam serve`` started as a user starts it, on loopback, answering every route
over HTTP; and concurrent clients against a real uvicorn that is kept busy (503, then recovery)."""

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from serving import base64_of, png_of
from xsam.cli import main
from xsam.serve import create_app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(base: str, process: subprocess.Popen | None = None, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {base} within {limit:g} s")


@pytest.fixture
def served_cli(tiny_model, tmp_path):
    """``xsam serve`` in a subprocess on a saved tiny model, with an API key."""
    tiny_model.save_pretrained(tmp_path / "tiny")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "xsam.cli",
        "serve",
        "--model",
        str(tmp_path / "tiny"),
        "--port",
        str(port),
    ]
    command += ["--api-key", "k3y", "--cache-bytes", "50000000", "--queue", "4", "--timeout", "60"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(30)


def test_xsam_serve_answers_every_route_over_http(served_cli, image_png):
    key = {"Authorization": "Bearer k3y"}
    with httpx.Client(base_url=served_cli, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").json()["ready"] is True
        assert http.get("/v1/models").status_code == 401
        (model,) = http.get("/v1/models", headers=key).json()["models"]
        assert model["id"] == "tiny" and model["preset"] == "tiny"
        assert "/v1/predict" in http.get("/openapi.json").json()["paths"]
        assert http.get("/docs").status_code == 200
        image = http.post("/v1/images", files={"file": ("a.png", image_png, "image/png")}, headers=key).json()
        body = {
            "image_id": image["image_id"],
            "task": "interactive",
            "points": [[10, 10]],
            "outputs": ["rle", "polygons"],
        }
        answer = http.post("/v1/predict", json=body, headers=key).json()
        assert answer["timing"]["cached"] and len(answer["instances"]) == 1
        chat = {
            "image_id": image["image_id"],
            "messages": [{"role": "user", "content": "hi"}],
            "max_new_tokens": 3,
        }
        assert isinstance(http.post("/v1/chat", json=chat, headers=key).json()["text"], str)
        assert http.delete(f"/v1/images/{image['image_id']}", headers=key).status_code == 204
        assert http.post("/v1/predict", json=body, headers=key).status_code == 404
        too_big = http.post("/v1/images", content=b"0" * 40_000_000, headers=key)
        assert too_big.status_code == 413
        x_any = {
            "model": "tiny",
            "image": "data:image/png;base64," + base64_of(image_png),
            "params": {"marks": [{"type": "point", "data": [5, 5], "label": 1}]},
        }
        reply = http.post("/x-anylabeling/v1/predict", json=x_any, headers={"Token": "k3y"}).json()
        assert reply["success"] is True
        assert http.get("/label-studio/health").json()["status"] == "UP"
        assert http.post("/label-studio/setup", json={"project": 1}, auth=("user", "k3y")).json() == {
            "model_version": "tiny"
        }


def test_a_real_server_under_a_flood_refuses_quickly_and_recovers(service_factory, image_png):
    service = service_factory(queue_size=2, timeout=30)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base)
    release = threading.Event()
    service.worker.submit(lambda: release.wait(30), timeout=60)  # the model is busy
    image = base64_of(png_of(np.full((32, 32, 3), 7, dtype=np.uint8)))

    def ask(_: int) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        response = httpx.post(f"{base}/v1/predict", json={"image": image, "text": "x"}, timeout=60)
        return response.status_code, time.perf_counter() - start, response.headers.get("retry-after")

    try:
        with ThreadPoolExecutor(8) as pool:
            flood = [pool.submit(ask, i) for i in range(16)]
            time.sleep(1.0)  # the queue has filled; the others were refused at once
            release.set()
            results = [future.result(60) for future in flood]
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 2 and statuses.count(503) >= 8  # the queued ones were answered
        assert all(seconds < 2 and retry for status, seconds, retry in results if status == 503)
        assert ask(0)[0] == 200  # recovered
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_xsam_serve_refuses_a_taken_port_and_bad_flags_in_one_line(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--files-root", str(tmp_path / "absent")]) == 2
    assert "--files-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--timeout", "inf"])
    assert refused.value.code == 2 and "finite positive" in capsys.readouterr().err
