"""The benchmark runner: every benchmark end to end, determinism, oracle predictions scoring perfectly,
and saved predictions re-scored by ``xsam score`` to the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark_root import build_benchmark_root
from xsam.cli import main
from xsam.config import XSamConfig
from xsam.eval.benchmarks import BENCHMARKS, get_benchmark, resolve_paths
from xsam.eval.evaluators import (
    GCGEvaluator,
    InstanceEvaluator,
    MaskIoUEvaluator,
    PanopticEvaluator,
    SemanticEvaluator,
    VGDEvaluator,
    build_evaluator,
)
from xsam.modeling.xsam import XSamModel
from xsam.tasks.prediction import Prediction
from xsam.tasks.records import Record

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return build_benchmark_root(tmp_path_factory.mktemp("datas"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("model")
    tiny_model.save_pretrained(folder)
    return folder


# -------------------------------------------------------------------------------------- table
def test_benchmark_table_covers_the_papers_benchmarks():
    names = set(BENCHMARKS)
    required = {
        *("coco_panoptic", "coco_semantic", "coco_instance"),
        *("ade20k_panoptic", "ade20k_semantic", "ade20k_instance"),
        *("refcoco_val", "refcoco_testA", "refcoco_testB"),
        *("refcoco+_val", "refcoco+_testA", "refcoco+_testB"),
        *("refcocog_val", "refcocog_test", "reasonseg_val", "reasonseg_test"),
        *("reasonseg_test_short", "reasonseg_test_long", "gcg_val", "gcg_test"),
    }
    assert required <= names
    for kind in ("point", "scribble", "box", "mask"):
        assert f"interactive_{kind}" in names and f"vgd_{kind}" in names
    assert get_benchmark("coco_panoptic_genseg").name == "coco_panoptic"  # official alias
    with pytest.raises(ValueError, match="valid benchmarks"):
        get_benchmark("coco_panoptik")


def test_resolve_paths_joins_relative_and_checks_keys(tmp_path):
    benchmark = get_benchmark("coco_instance")
    paths = resolve_paths(benchmark, tmp_path, {"image_dir": "/elsewhere/images"})
    assert paths["annotations"] == tmp_path / benchmark.paths["annotations"]
    assert paths["image_dir"] == Path("/elsewhere/images")
    with pytest.raises(ValueError, match="its keys are annotations, image_dir"):
        resolve_paths(benchmark, tmp_path, {"png_dir": "x"})


def test_missing_files_name_the_path(tmp_path):
    benchmark = get_benchmark("coco_panoptic")
    with pytest.raises(FileNotFoundError, match=r"panoptic_val2017\.json"):
        build_evaluator(benchmark, resolve_paths(benchmark, tmp_path))


# ------------------------------------------------------------------------------------ oracles
def _masks(masks: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.bool)


def _oracle(evaluator, sample) -> Prediction:
    """The prediction that reproduces the ground truth of ``sample``."""
    task = evaluator.benchmark.task
    if isinstance(evaluator, PanopticEvaluator):
        record: Record = sample.truth
        segmentation = np.zeros((record.height, record.width), dtype=np.int64)
        segments, masks = [], []
        for index, segment in enumerate(s for s in record.segments if not s.iscrowd):
            mask = segment.mask.decode()
            segmentation[mask] = index + 1
            masks.append(mask)
            label = evaluator.names.index(segment.category)
            segments.append({"id": index + 1, "category_id": label, "score": 1.0})
        labels = [evaluator.names[s["category_id"]] for s in segments]
        return Prediction(
            task,
            _masks(masks, record.height, record.width),
            labels,
            [1.0] * len(labels),
            segmentation=torch.from_numpy(segmentation),
            segments=segments,
        )
    if isinstance(evaluator, SemanticEvaluator):
        truth = evaluator.ground_truth(sample.truth).astype(np.int64)
        truth[truth == 255] = 0
        empty = torch.zeros(0, *truth.shape, dtype=torch.bool)
        return Prediction(task, empty, [], [], segmentation=torch.from_numpy(truth))
    if isinstance(evaluator, InstanceEvaluator):
        record = sample.truth
        kept = [s for s in record.segments if not s.iscrowd]
        masks = [s.mask.decode() for s in kept]
        return Prediction(
            task, _masks(masks, record.height, record.width), [s.category for s in kept], [1.0] * len(kept)
        )
    if isinstance(evaluator, MaskIoUEvaluator):
        truth = sample.truth.target()
        return Prediction(task, torch.from_numpy(truth)[None], ["x"], [1.0])
    if isinstance(evaluator, GCGEvaluator):
        record = sample.truth
        masks = [s.mask.decode() for s in record.segments]
        return Prediction(
            task,
            _masks(masks, record.height, record.width),
            ["p"] * len(masks),
            [1.0] * len(masks),
            text=record.caption,
        )
    assert isinstance(evaluator, VGDEvaluator)
    record, prompted = sample.truth.record, sample.truth.category_ids
    kept = [s for s in record.segments if not s.iscrowd and s.category_id in prompted]
    masks = [s.mask.decode() for s in kept]
    labels = [f"region {prompted.index(s.category_id)}" for s in kept]
    return Prediction(task, _masks(masks, record.height, record.width), labels, [1.0] * len(kept))


_PERFECT = {
    "panoptic": {"pq": 1.0, "sq": 1.0, "rq": 1.0},
    "semantic": {"miou": 1.0, "pacc": 1.0, "macc": 1.0},
    "instance": {"ap": 1.0, "ap50": 1.0},
    "mask_iou": {"ciou": 1.0, "giou": 1.0},
    "gcg": {"ap50": 1.0, "miou": 1.0},
    "vgd": {"ap": 1.0, "ap50": 1.0},
}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_oracle_predictions_score_perfectly(name, data_root):
    """Feeding each evaluator the ground truth as prediction catches wiring bugs (category ids,
    label indices, ignore regions, prompted categories) in every family."""
    benchmark = BENCHMARKS[name]
    if benchmark.metric == "gcg":
        pytest.importorskip("pycocoevalcap")
    evaluator = build_evaluator(benchmark, resolve_paths(benchmark, data_root))
    assert evaluator.samples
    for sample in evaluator.samples:
        evaluator.update(sample, _oracle(evaluator, sample))
    metrics = evaluator.compute()
    for key, expected in _PERFECT[benchmark.metric].items():
        assert metrics[key] == pytest.approx(expected), (key, metrics)


# ------------------------------------------------------------------------------------ runner
def _run(model_dir: Path, data_root: Path, out: Path, benchmarks: list[str], *extra: str) -> dict:
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--benchmark",
            ",".join(benchmarks),
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((out / "results.json").read_text())


def test_every_benchmark_runs_end_to_end_and_reruns_identically(model_dir, data_root, tmp_path):
    names = list(BENCHMARKS)
    first = _run(model_dir, data_root, tmp_path / "a", names)
    assert first["units"] == "fraction"
    assert list(first["benchmarks"]) == names
    for name, result in first["benchmarks"].items():
        assert result["num_samples"] > 0
        assert result["metrics"], name
        assert result["headline"] in result["metrics"], name
        for key, value in result["metrics"].items():
            assert np.isfinite(value), (name, key)
        assert result["protocol"]["question_templates"][0], name
    table = (tmp_path / "a" / "results.md").read_text()
    assert all(f"| {name} |" in table for name in names)
    second = _run(model_dir, data_root, tmp_path / "b", names)
    for name in names:
        assert second["benchmarks"][name]["metrics"] == first["benchmarks"][name]["metrics"], name


def test_limit_evaluates_the_first_samples(model_dir, data_root, tmp_path):
    results = _run(model_dir, data_root, tmp_path, ["refcoco_val"], "--limit", "1")
    assert results["benchmarks"]["refcoco_val"]["num_samples"] == 1


_GCG = "gcgseg_data/grand_f/annotations/val_test"
_SCORE_ARGUMENTS = {
    "coco_panoptic": lambda root, folder: [
        "--task", "panoptic",
        "--gt-json", str(root / "genseg_data/coco2017/annotations/panoptic_val2017.json"),
        "--gt-dir", str(root / "genseg_data/coco2017/annotations/panoptic_val2017"),
        "--pred-json", str(folder / "predictions.json"),
        "--pred-dir", str(folder / "panoptic"),
    ],
    "coco_semantic": lambda root, folder: [
        "--task", "semantic", "--gt-dir", str(folder / "semantic_gt"), "--pred-dir", str(folder / "semantic"),
        "--num-classes", "4",
    ],
    "coco_instance": lambda root, folder: [
        "--task", "instance",
        "--gt-json", str(root / "genseg_data/coco2017/annotations/instances_val2017.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
    "refcoco_val": lambda root, folder: [
        "--task", "referring",
        "--gt-json", str(folder / "ground_truth.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
    "reasonseg_val": lambda root, folder: [
        "--task", "reasoning",
        "--gt-json", str(folder / "ground_truth.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
    "interactive_box": lambda root, folder: [
        "--task", "interactive",
        "--gt-json", str(folder / "ground_truth.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
    "gcg_val": lambda root, folder: [
        "--task", "gcg",
        "--gt-json", str(root / _GCG / "val_gcg_coco_mask_gt.json"),
        "--caption-gt-json", str(root / _GCG / "val_gcg_coco_caption_gt.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
    "vgd_mask": lambda root, folder: [
        "--task", "vgd",
        "--gt-json", str(folder / "ground_truth.json"),
        "--pred-json", str(folder / "predictions.json"),
    ],
}  # fmt: skip


def test_saved_predictions_rescore_to_the_same_numbers(model_dir, data_root, tmp_path, capsys):
    """``xsam eval --save-predictions`` writes what ``xsam score`` reads, and both agree."""
    names = list(_SCORE_ARGUMENTS)
    results = _run(model_dir, data_root, tmp_path, names, "--save-predictions")
    capsys.readouterr()
    for name in names:
        assert main(["score", *_SCORE_ARGUMENTS[name](data_root, tmp_path / name)]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert scored["units"] == "fraction"
        for key, value in results["benchmarks"][name]["metrics"].items():
            assert scored[key] == pytest.approx(value, abs=1e-9), (name, key)


def test_score_reports_missing_arguments_and_mismatched_ids(tmp_path, capsys):
    assert main(["score", "--task", "instance", "--gt-json", "x.json"]) == 2
    assert "--pred-json" in capsys.readouterr().err
    rle = {"size": [1, 1], "counts": [0, 1]}
    (tmp_path / "gt.json").write_text(json.dumps([{"id": "a", "segmentation": rle}]))
    (tmp_path / "pred.json").write_text(json.dumps([{"id": "b", "segmentation": rle}]))
    arguments = ["--gt-json", str(tmp_path / "gt.json"), "--pred-json", str(tmp_path / "pred.json")]
    assert main(["score", "--task", "referring", *arguments]) == 2
    assert "without prediction ['a']" in capsys.readouterr().err


def test_eval_rejects_unknown_benchmark(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--benchmark", "nope", "--out", str(tmp_path)]) == 2
    assert "valid benchmarks" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_two_process_accelerate_launch_matches_one_process(model_dir, data_root, tmp_path):
    """A real ``accelerate launch`` on two CPU processes: images are split, metric states gathered."""
    import subprocess
    import sys

    names = ["refcoco_val", "reasonseg_val", "coco_semantic", "vgd_box"]
    single = _run(model_dir, data_root, tmp_path / "one", names)
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("-m", "xsam.cli", "eval", "--model", str(model_dir), "--benchmark", ",".join(names)),
        *("--data-root", str(data_root), "--out", str(tmp_path / "two")),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    for name in names:
        assert double["benchmarks"][name]["num_samples"] == single["benchmarks"][name]["num_samples"]
        for key, value in single["benchmarks"][name]["metrics"].items():
            assert double["benchmarks"][name]["metrics"][key] == pytest.approx(value, abs=1e-9), (name, key)


SYNTHETIC_KEYS = [
    "pq",
    "miou",
    "ap",
    "ov_pq",
    "refer_ciou",
    "reason_giou",
    "gcg_ap50",
    "gcg_miou",
    "interactive_miou_point",
    "interactive_miou_scribble",
    "interactive_miou_box",
    "interactive_miou_mask",
    "vgd_ap_point",
    "vgd_ap_scribble",
    "vgd_ap_box",
    "vgd_ap_mask",
]


def test_synthetic_suite_runs_on_a_generated_world(model_dir, tmp_path, capsys):
    """``xsam synth`` then ``xsam eval --suite synthetic``: every task on the world's test split, with
    the flat summary keys at the top of results.json."""
    world = tmp_path / "world"
    assert main(["synth", "--out", str(world), "--images", "4", "--image-size", "96", "--seed", "3"]) == 0
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model_dir), "--suite", "synthetic", "--data-root", str(world)]
    assert main([*argv, "--out", str(out), "--max-new-tokens", "4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["units"] == "fraction"
    for key in SYNTHETIC_KEYS:
        assert 0.0 <= results[key] <= 1.0, key
    assert all(name.startswith("synthetic_") for name in results["benchmarks"])
    table = (out / "results.md").read_text()
    assert "| refer_ciou |" in table and "| synthetic_gcg |" in table
    capsys.readouterr()
    assert main(["synth", "--out", str(world)]) == 2  # refuses to overwrite
    assert str(world) in capsys.readouterr().err


def test_closed_set_suite_scores_a_stage_one_model(tmp_path, tokenizer):
    """``xsam eval --suite synthetic_closed_set``: the closed-set segmentor of a stage-1 model (one
    head class per world category) on the panoptic, semantic and instance benchmarks."""
    world = tmp_path / "world"
    assert main(["synth", "--out", str(world), "--images", "4", "--image-size", "96", "--seed", "3"]) == 0
    config = XSamConfig.tiny()
    config.mask_decoder.num_closed_set_classes = 11  # the world's 6 shapes and 5 stuff classes
    torch.manual_seed(0)
    model_dir = tmp_path / "s1"
    XSamModel(config).save_pretrained(model_dir)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model_dir), "--suite", "synthetic_closed_set", "--data-root", str(world)]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("pq", "sq", "rq", "miou", "ap", "ap50"):
        assert 0.0 <= results[key] <= 1.0, key
    benchmarks = results["benchmarks"]
    assert sorted(benchmarks) == [
        "synthetic_closed_set_instance",
        "synthetic_closed_set_panoptic",
        "synthetic_closed_set_semantic",
    ]
    assert all(entry["protocol"]["closed_set"] is True for entry in benchmarks.values())


def test_closed_set_suite_needs_a_closed_set_head(model_dir, tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["synth", "--out", str(world), "--images", "2", "--image-size", "96", "--seed", "3"]) == 0
    argv = ["eval", "--model", str(model_dir), "--suite", "synthetic_closed_set", "--data-root", str(world)]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
    assert "closed-set head" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "results.json").exists()
