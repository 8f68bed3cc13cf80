"""``xsam demo`` from the command line: refusals in one line before anything loads, and requests kept
only in ``--log-dir``."""

import json
import socket

import pytest
from gradio_client import Client, handle_file

from serving import EXAMPLE_IMAGE
from xsam.cli import main
from xsam.demo import Demo
from xsam.demo.app import build_demo
from xsam.inference.predictor import XSamPredictor


def test_a_taken_port_and_a_file_as_log_dir_are_one_line_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # the command sets its own; undone after
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
        assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--log-dir", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--port", "0"])


def test_requests_are_kept_only_in_the_log_dir(tiny_model, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    page = build_demo(
        Demo(XSamPredictor(tiny_model), "tiny"), work_dir=tmp_path / "work", log_dir=tmp_path / "log"
    )
    page.queue().launch(
        server_name="127.0.0.1", server_port=port, ssr_mode=False, prevent_thread_lock=True, quiet=True
    )
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = handle_file(str(EXAMPLE_IMAGE))
        editor = {"background": image, "layers": [], "composite": image, "id": None}
        client.predict(editor, "referring", "the hexagon", "points", 0.5, True, api_name="/run")
    finally:
        page.close()
    (day,) = (tmp_path / "log").iterdir()
    names = sorted(path.name for path in day.iterdir())
    assert names[-1] == "requests.jsonl" and len(names) == 3
    assert names[0].endswith("-input.png") and names[1].endswith("-output.png")
    (line,) = (day / "requests.jsonl").read_text().splitlines()
    assert json.loads(line)["task"] == "referring"
