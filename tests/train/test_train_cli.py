"""``xsam train``: argument errors, a single-process run on the COCO panoptic fixture, a 2-process CPU
(gloo) run through ``accelerate launch`` that keeps ranks in sync on single-source steps, and the
``configs/accelerate`` files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from locations import FORMATS, ROOT
from xsam.cli import main
from xsam.config import XSamConfig
from xsam.modeling.xsam import XSamModel
from xsam.train import loop

DATA = FORMATS
PANOPTIC = "coco_panoptic:root=coco,annotations=panoptic.json,png_dir=panoptic,image_dir=images"
FAST = ["--preset", "tiny", "--batch-size", "1", "--num-points", "256", "--data-root", str(DATA)]


@pytest.fixture
def one_thread():
    """Intra-op threads fight over the 2 CPU cores of small machines (10x slower steps); use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def test_help_lists_the_data_formats(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert (
        "coco_panoptic: annotations,png_dir,image_dir" in text and "llava" in text and "--max-steps" in text
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "cocoo:json=a"], "unknown dataset format 'cocoo'"),
        (["--data", "coco_panoptic:annotations=a.json"], "missing required key"),
        (["--data", PANOPTIC, "--init", "no/such/dir"], "config.json not found"),
        (["--data", PANOPTIC, "--data", PANOPTIC], "repeated: coco_panoptic"),
        (["--data", PANOPTIC, "--lr-multiplier", "connector:2"], "--lr-multiplier expects KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, extra, message):
    assert main(["train", "--stage", "mixed_finetune", "--output", str(tmp_path), *FAST, *extra]) == 2
    assert message in capsys.readouterr().err


def test_train_writes_a_loadable_final_model_and_a_log(tmp_path, one_thread):
    output = tmp_path / "run"
    argv = [
        "train",
        "--stage",
        "mixed_finetune",
        "--data",
        PANOPTIC,
        "--output",
        str(output),
        "--max-steps",
        "2",
        "--lr",
        "3e-3",
        "--lr-multiplier",
        "segmentation_encoder=1.0",
    ]
    assert main([*argv, *FAST]) == 0
    model = XSamModel.from_pretrained(output / "final")
    assert model.config == XSamConfig.tiny()
    records = _read_log(output)
    steps = [record for record in records if "step" in record]
    assert [record["step"] for record in steps] == [1, 2]
    assert all(record["sources"] == [["coco_panoptic"]] for record in steps)
    assert 4e-5 < max(record["lr"] for record in steps) <= 3e-3  # --lr overrides the preset's 4e-5
    assert len(records[-1]["final_parameter_checksums"]) == 1


@pytest.mark.parametrize(("decay", "halves"), [(None, True), ("step", False)])
def test_decay_overrides_the_preset_schedule(tmp_path, one_thread, decay, halves):
    """mixed_finetune decays by a cosine (over 3 steps: warmup, full rate, half rate); ``--decay step``
    without milestones keeps the full rate."""
    output = tmp_path / "run"
    argv = ["train", "--stage", "mixed_finetune", "--data", PANOPTIC, "--output", str(output)]
    argv += ["--max-steps", "3", "--lr", "1e-3", *(["--decay", decay] if decay else [])]
    assert main([*argv, *FAST]) == 0
    lrs = [record["lr"] for record in _read_log(output) if "step" in record]
    assert lrs[0] < 1e-3 * lrs[1]  # (the logged rate is the first group's, under its multiplier)
    assert lrs[2] / lrs[1] == pytest.approx(0.5 if halves else 1.0)


STAGE_ONE = ["train", "--stage", "seg_finetune", "--data", PANOPTIC, "--max-steps", "1"]


def test_stage_one_trains_on_dataset_class_ids_without_jitter(tmp_path, one_thread):
    # the fixture lists 4 classes; the closed-set head gets one output per class
    argv = [*STAGE_ONE, "--output", str(tmp_path), "--num-closed-set-classes", "4", "--scale-jitter", "none"]
    assert main([*argv, *FAST]) == 0
    model = XSamModel.from_pretrained(tmp_path / "final")
    assert model.closed_set_head.classifier.out_features == 5


def test_class_weight_reaches_the_criterion_and_loss_terms_are_logged(tmp_path, one_thread, monkeypatch):
    seen = []

    class Recording(loop.SegmentationCriterion):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(loop, "SegmentationCriterion", Recording)
    argv = [*STAGE_ONE, "--output", str(tmp_path), "--num-closed-set-classes", "4", "--class-weight", "4.5"]
    assert main([*argv, *FAST]) == 0
    assert seen and seen[0]["class_weight"] == 4.5
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    for name in ("loss_cls", "loss_mask", "loss_dice", "loss_seg"):
        assert first[name] > 0, name
    assert first["loss_cls"] + first["loss_mask"] + first["loss_dice"] < first["loss_seg"]  # + aux layers


def test_grad_clip_overrides_the_stage_preset(tmp_path, monkeypatch):
    seen = []

    def fake_train(arguments):
        seen.append(arguments)
        return tmp_path / "final"

    monkeypatch.setattr(loop, "train", fake_train)
    assert main([*STAGE_ONE, "--output", str(tmp_path), *FAST]) == 0
    assert main([*STAGE_ONE, "--output", str(tmp_path), "--grad-clip", "1.5", *FAST]) == 0
    assert [arguments.stage.grad_clip for arguments in seen] == [0.01, 1.5]  # preset, then override


@pytest.mark.parametrize("flag", ["--class-weight", "--grad-clip"])
@pytest.mark.parametrize("text", ["0", "-1", "x"])
def test_bad_positive_numbers_are_argument_errors(tmp_path, capsys, flag, text):
    with pytest.raises(SystemExit) as exit_info:
        main([*STAGE_ONE, "--output", str(tmp_path), flag, text, *FAST])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_stage_one_rejects_a_head_smaller_than_the_class_list(tmp_path, capsys, one_thread):
    argv = [*STAGE_ONE, "--output", str(tmp_path), "--num-closed-set-classes", "2"]
    assert main([*argv, *FAST]) == 2
    assert "the closed-set head has 2 classes" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["2,1", "0,1", "1", "a,b"])
def test_bad_scale_jitter_is_an_argument_error(tmp_path, capsys, text):
    with pytest.raises(SystemExit) as exit_info:
        main([*STAGE_ONE, "--output", str(tmp_path), "--scale-jitter", text, *FAST])
    assert exit_info.value.code == 2
    assert "--scale-jitter" in capsys.readouterr().err


def test_two_process_cpu_run_keeps_ranks_in_sync(tmp_path):
    """accelerate launch with torchrun and gloo: ``--cpu`` alone would start a single process (accelerate's
    multi-CPU path wants mpirun), so the DDP launcher runs with ``ACCELERATE_USE_CPU=1`` (MULTI_CPU, gloo)."""
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "xsam.cli",
        "train",
        "--stage",
        "mixed_finetune",
        "--data",
        f"{PANOPTIC},name=a",
        "--data",
        f"{PANOPTIC},name=b",
        "--output",
        str(output),
        "--max-steps",
        "3",
        "--log-every",
        "1",
        *FAST,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    records = _read_log(output)
    steps = [record for record in records if "step" in record]
    assert [record["step"] for record in steps] == [1, 2, 3]
    for record in steps:
        assert len(record["sources"]) == 2  # both ranks reported
        assert len({source for rank in record["sources"] for source in rank}) == 1, record["sources"]
    checksums = records[-1]["final_parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    XSamModel.from_pretrained(output / "final")


@pytest.mark.parametrize(
    ("name", "distributed_type"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")],
)
def test_accelerate_configs_parse(name, distributed_type):
    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    text = path.read_text()
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml -m xsam.cli train" in text
    config = yaml.safe_load(text)
    assert config["distributed_type"] == distributed_type
    assert config["compute_environment"] == "LOCAL_MACHINE"
    assert isinstance(config["num_processes"], int) and config["num_machines"] == 1
    assert config["mixed_precision"] in ("no", "bf16")
    if name == "fsdp":
        fsdp = config["fsdp_config"]
        assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"]
    if name == "deepspeed_zero2":
        assert config["deepspeed_config"]["zero_stage"] == 2
    # accelerate's own loader accepts it (unknown keys would raise)
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(path))
    assert str(loaded.distributed_type).endswith(distributed_type)
