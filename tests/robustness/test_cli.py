"""The command line under bad input: one line ``error: <what and where>``, exit code 2, a traceback only
with --debug; batch runs keep going and lose nothing; outputs never collide and are never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import write_bomb, write_truncated_jpeg
from xsam.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(folder)
    return folder


def _image(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def _predict(model_dir: Path, *arguments: str) -> int:
    return main(["predict", "--model", str(model_dir), "--max-new-tokens", "2", *arguments])


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_folder_with_bad_files_processes_every_good_one(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "a.jpg", 1)
    _image(folder / "a.png", 2)  # same stem as a.jpg
    write_truncated_jpeg(folder / "b.jpg")
    (folder / "c.png").write_text("not an image")
    _image(folder / "d.png", 3)
    out = tmp_path / "out"
    assert _predict(model_dir, "--image", str(folder), "--task", "gcg", "--out", str(out)) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: 2 of 5 images failed") and "b.jpg" in line and "c.png" in line
    written = sorted(path.name for path in out.iterdir())
    assert written == [
        "a_jpg_gcg.json",
        "a_jpg_gcg.png",
        "a_png_gcg.json",
        "a_png_gcg.png",
        "d_gcg.json",
        "d_gcg.png",
    ]  # no name collision, nothing for the bad files, no temporary file left
    assert json.loads((out / "a_png_gcg.json").read_text())["image"].endswith("a.png")


def test_single_bad_images_are_one_line_naming_the_file(model_dir, tmp_path, capsys):
    for path, message in (
        (write_bomb(tmp_path / "bomb.png"), "bomb.png is 12000x12000"),
        (write_truncated_jpeg(tmp_path / "cut.jpg"), "cut.jpg: truncated or corrupt"),
        (tmp_path / "missing.png", "image not found"),
    ):
        assert _predict(model_dir, "--image", str(path), "--task", "gcg", "--out", str(tmp_path / "o")) == 2
        assert message in _one_error_line(capsys)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--task", "gcg", "--device", "cuda"], "CUDA is not available"),
        (["--task", "gcg", "--device", "toaster"], "not a torch device"),
        (["--task", "interactive", "--mask", "MASK"], "as an image"),
        (["--task", "interactive", "--point", "900,900"], "lies outside the 32x24 image"),
        (
            ["--task", "interactive", "--point", "1,1", "--threshold", "7"],
            r"threshold must be a number in [0, 1]",
        ),
        (["--task", "gcg", "--out", "FILE"], "is a file, not a folder"),
        (["--task", "referring"], "needs text"),
    ],
)
def test_bad_arguments_are_one_line(model_dir, tmp_path, capsys, arguments, message):
    image = _image(tmp_path / "photo.png")
    (tmp_path / "mask.png").write_text("not an image")
    (tmp_path / "file").write_text("")
    replaced = [
        {"MASK": str(tmp_path / "mask.png"), "FILE": str(tmp_path / "file")}.get(a, a) for a in arguments
    ]
    assert _predict(model_dir, "--image", str(image), "--out", str(tmp_path / "out"), *replaced) == 2
    assert message in _one_error_line(capsys)


def test_debug_shows_the_traceback(model_dir, tmp_path, monkeypatch):
    missing = str(tmp_path / "nothing.png")
    with pytest.raises(FileNotFoundError, match="image not found"):
        main(["--debug", "predict", "--model", str(model_dir), "--image", missing, "--task", "gcg"])
    with pytest.raises(FileNotFoundError):
        main(["predict", "--debug", "--model", str(model_dir), "--image", missing, "--task", "gcg"])
    monkeypatch.setenv("XSAM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["describe", "--model", str(tmp_path / "no-model")])


def test_describe_of_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["describe", "--model", str(tmp_path / "no-model")]) == 2
    assert "no-model does not exist" in _one_error_line(capsys)


def test_score_names_the_file_and_id_of_a_bad_rle(tmp_path, capsys):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps([{"id": "q7", "segmentation": {"size": [2, 2], "counts": [4]}}]))
    for bad, message in (
        ({"size": [2, 2], "counts": 5}, "counts must be a string or a list"),
        ({"size": [2, 2], "counts": [9]}, "add up to 9 pixels"),
        ({"counts": [4]}, "'size' and 'counts'"),
        ({"size": [2, 2], "counts": "}}}}"}, "invalid RLE"),
    ):
        predictions = tmp_path / "predictions.json"
        predictions.write_text(json.dumps([{"id": "q7", "segmentation": bad}]))
        code = main(
            ["score", "--task", "referring", "--gt-json", str(truth), "--pred-json", str(predictions)]
        )
        line = _one_error_line(capsys)
        assert code == 2 and "predictions.json: id 'q7'" in line and message in line, line


def test_eval_keeps_the_benchmarks_that_finished(model_dir, tmp_path, capsys):
    from benchmark_root import build_benchmark_root

    root = build_benchmark_root(tmp_path / "datas")
    (root / "genseg_data/coco2017/annotations/panoptic_val2017.json").unlink()
    out = tmp_path / "eval"
    benchmarks = ["--benchmark", "refcoco_val,coco_panoptic", "--data-root", str(root), "--limit", "2"]
    code = main(["eval", "--model", str(model_dir), *benchmarks, "--out", str(out)])
    assert code == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: coco_panoptic: ") and "panoptic_val2017.json" in line
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["refcoco_val"]


def test_score_of_instances_names_the_file_and_result_of_a_bad_rle(tmp_path, capsys):
    truth = tmp_path / "instances.json"
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "area": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0}
    annotation["segmentation"] = {"size": [4, 5], "counts": [3, 4, 13]}
    images = [{"id": 1, "height": 4, "width": 5, "file_name": "a.png"}]
    truth.write_text(
        json.dumps({"images": images, "categories": [{"id": 1, "name": "x"}], "annotations": [annotation]})
    )
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            [
                {
                    "image_id": 1,
                    "category_id": 1,
                    "score": 0.9,
                    "segmentation": {"size": [4, 5], "counts": "}}}}"},
                }
            ]
        )
    )
    assert main(["score", "--task", "instance", "--gt-json", str(truth), "--pred-json", str(results)]) == 2
    assert "results.json: result 0: invalid RLE" in _one_error_line(capsys)
