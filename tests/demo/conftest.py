"""A demo page around the bundled default model, launched on loopback for the client and browser
tests (one per module), closed afterwards."""

import socket
from collections.abc import Iterator

import pytest

from xsam.demo import Demo
from xsam.demo.app import build_demo
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = Demo(XSamPredictor(XSamModel.from_pretrained("default")), "default")
    page = build_demo(demo, work_dir=tmp_path_factory.mktemp("demo"))
    page.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, ssr_mode=False, prevent_thread_lock=True, quiet=True
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()
