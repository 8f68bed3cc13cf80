"""``xsam train``: argument errors, a single-process run on the COCO panoptic fixture, a 2-process CPU
(gloo) run through ``accelerate launch`` that keeps ranks in sync on single-source steps, and the
``configs/accelerate`` files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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
        (["--data", PANOPTIC, "--init", "no/such/dir"], "--init no/such/dir: no such folder"),
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


# ------------------------------------------------------------------------------------ bad samples
def _truncated_data(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the fixtures whose image 1 lost the second half of its bytes; (data root, that file)."""
    root = tmp_path / "data"
    shutil.copytree(DATA / "coco", root / "coco")
    image = root / "coco" / "images" / "000000000001.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return root, image


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_stops_the_run_with_a_message_naming_it(tmp_path, capsys, one_thread, workers):
    root, image = _truncated_data(tmp_path)
    argv = ["train", "--stage", "mixed_finetune", "--data", PANOPTIC, "--output", str(tmp_path / "run")]
    argv += ["--max-steps", "4", *FAST, "--data-root", str(root), "--num-workers", str(workers)]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    # one line, also from a worker process (whose error arrives with its traceback)
    (error,) = [line for line in stderr.splitlines() if "cannot be built" in line]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr
    assert "coco_panoptic: record 0 (image_id 1" in error and str(image) in error
    assert "truncated" in error
    assert not (tmp_path / "run" / "final").exists()


def test_skip_bad_samples_finishes_and_counts_the_skipped_image(tmp_path, capsys, one_thread):
    root, _ = _truncated_data(tmp_path)
    output = tmp_path / "run"
    argv = ["train", "--stage", "mixed_finetune", "--data", PANOPTIC, "--output", str(output)]
    argv += ["--max-steps", "4", *FAST, "--data-root", str(root), "--skip-bad-samples"]
    assert main(argv) == 0
    assert "skipped 1 bad sample(s) (coco_panoptic: 1)" in capsys.readouterr().out
    records = _read_log(output)
    steps = [record for record in records if "step" in record]
    assert steps[-1]["skipped_samples"] == {"coco_panoptic": 1}  # counted once, though met every epoch
    assert {"skipped_samples": {"coco_panoptic": 1}} in records
    XSamModel.from_pretrained(output / "final")


# ------------------------------------------------------------------------------------- run folder
RUN = ["train", "--stage", "mixed_finetune", "--data", PANOPTIC]


def _listing(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


def test_a_non_empty_output_is_refused_without_resume_or_overwrite(tmp_path, capsys, one_thread):
    output = tmp_path / "run"
    argv = [*RUN, "--output", str(output), *FAST]
    assert main([*argv, "--max-steps", "2", "--save-every", "1"]) == 0
    before = _listing(output)
    assert main([*argv, "--max-steps", "1"]) == 2
    error = capsys.readouterr().err
    assert f"--output {output} is not empty" in error and "--resume" in error and "--overwrite" in error
    assert _listing(output) == before  # nothing written, removed or appended

    (output / "notes.txt").write_text("mine")
    assert main([*argv, "--max-steps", "1", "--overwrite"]) == 0
    assert "removed checkpoints/, final/, log.jsonl" in capsys.readouterr().out
    assert (output / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["step-00000001"]
    assert [record["step"] for record in _read_log(output) if "step" in record] == [1]


def test_resume_starts_afresh_in_an_empty_folder_and_refuses_one_without_a_checkpoint(
    tmp_path, capsys, one_thread
):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*RUN, "--output", str(empty), *FAST, "--max-steps", "1", "--resume"]) == 0
    assert (empty / "final").is_dir()
    started = tmp_path / "started"  # killed before its first checkpoint
    started.mkdir()
    (started / "log.jsonl").write_text('{"step": 1}\n')
    assert main([*RUN, "--output", str(started), *FAST, "--max-steps", "1", "--resume"]) == 2
    assert "holds no complete checkpoint (log.jsonl)" in capsys.readouterr().err
    file = tmp_path / "file"
    file.write_text("")
    assert main([*RUN, "--output", str(file), *FAST, "--max-steps", "1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--output", str(empty), *FAST, "--resume", "--overwrite"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_keep_last_keeps_the_newest_checkpoints(tmp_path, one_thread):
    output = tmp_path / "run"
    argv = [*RUN, "--output", str(output), *FAST, "--max-steps", "5", "--save-every", "1"]
    assert main([*argv, "--keep-last", "2"]) == 0
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000005",
    ]


# ---------------------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-step run with checkpoints at steps 1 and 2 (tests copy it before damaging it)."""
    output = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main([*RUN, "--output", str(output), *FAST, "--max-steps", "2", "--save-every", "1"]) == 0
    torch.set_num_threads(threads)
    return output


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_the_middle(path: Path) -> None:
    """Same size, damaged content: the size check cannot see it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
    path.write_bytes(bytes(data))


def _write_safetensors_half(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(64)}, str(path.with_name("model.safetensors")))
    _truncate(path.with_name("model.safetensors"))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("pytorch_model.bin", _truncate, "truncated"),
        ("optimizer.bin", _truncate, "truncated"),
        ("scheduler.bin", _truncate, "truncated"),
        ("random_states_0.pkl", _truncate, "truncated"),
        ("random_states_0.pkl", _zero_the_middle, "corrupt"),
        ("random_states_0.pkl", Path.unlink, "missing"),
        ("trainer_state.json", lambda path: path.write_text('{"step": 2, "samp'), "corrupt"),
        ("model.safetensors", _write_safetensors_half, "truncated or corrupt"),
    ],
    ids=[
        "model",
        "optimizer",
        "scheduler",
        "rng-truncated",
        "rng-zeroed",
        "rng-missing",
        "json",
        "safetensors",
    ],
)
def test_a_damaged_checkpoint_is_an_error_naming_the_file(
    tmp_path, capsys, finished_run, name, damage, message
):
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    target = output / "checkpoints" / "step-00000002" / name
    damage(target)
    before = _listing(output)
    assert main([*RUN, "--output", str(output), *FAST, "--max-steps", "3", "--resume"]) == 2
    error = capsys.readouterr().err
    assert str(target) in error and message in error, error
    assert _listing(output) == before  # the damaged run is left as it was


def test_a_checkpoint_zeroed_in_place_is_an_error_naming_the_file(tmp_path, capsys, finished_run):
    """Blocks of zeros of the right size (a power loss before the data reached the disk): torch.load
    would read them as weights; the zip records' CRCs catch them."""
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    target = output / "checkpoints" / "step-00000002" / "pytorch_model.bin"
    _zero_the_middle(target)
    assert main([*RUN, "--output", str(output), *FAST, "--max-steps", "3", "--resume"]) == 2
    error = capsys.readouterr().err
    assert str(target) in error and "corrupt" in error, error


def test_resuming_with_another_batch_size_is_an_error_that_changes_nothing(tmp_path, capsys, finished_run):
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    before = _listing(output)
    argv = [*RUN, "--output", str(output), *FAST, "--max-steps", "3", "--resume", "--batch-size", "2"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "trainer_state.json: sampler state has batch_size_per_device=1, this sampler 2" in error
    assert _listing(output) == before


# --------------------------------------------------------------------------------------- --init
@pytest.fixture
def init_model(tmp_path) -> Path:
    directory = tmp_path / "init"
    XSamModel(XSamConfig.tiny()).save_pretrained(directory)
    return directory


def test_a_truncated_init_model_is_a_one_line_error(tmp_path, capsys, init_model):
    (weights,) = init_model.glob("*.safetensors")
    _truncate(weights)
    output = tmp_path / "run"
    assert main([*RUN, "--output", str(output), *FAST, "--max-steps", "1", "--init", str(init_model)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"cannot load the model {init_model}" in error and "\n" not in error
    assert not output.exists()  # nothing was started


def test_a_corrupt_init_config_is_a_one_line_error(tmp_path, capsys, init_model):
    (init_model / "config.json").write_text("{")
    assert main([*RUN, "--output", str(tmp_path / "run"), *FAST, "--init", str(init_model)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"--init {init_model}: cannot read the model" in error and "\n" not in error


@pytest.mark.parametrize(
    ("flag", "text"),
    [
        ("--seed", "-1"),
        ("--seed", str(2**32)),
        ("--epochs", "0"),
        ("--epochs", "inf"),
        ("--epochs", "nan"),
        ("--num-workers", "-1"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--keep-last", "0"),
    ],
)
def test_out_of_range_numbers_are_argument_errors(tmp_path, capsys, flag, text):
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--output", str(tmp_path), *FAST, flag, text])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_an_unknown_or_missing_tracker_is_an_error(tmp_path, capsys):
    assert main([*RUN, "--output", str(tmp_path / "a"), *FAST, "--log-with", "nosuch"]) == 2
    assert "Unsupported logging capability: nosuch" in capsys.readouterr().err
    if importlib.util.find_spec("tensorboard") is None:
        assert main([*RUN, "--output", str(tmp_path / "b"), *FAST, "--log-with", "tensorboard"]) == 2
        assert "--log-with tensorboard: the tracker's package is not installed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- exact resume
def _train_command(output: Path, *extra: str) -> list[str]:
    argv = ["train", "--stage", "mixed_finetune", "--data", PANOPTIC, "--output", str(output)]
    argv += ["--max-steps", "8", "--save-every", "3", "--seed", "7", "--log-every", "1000", *FAST]
    return [sys.executable, "-m", "xsam.cli", *argv, *extra]


def _deterministic_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _kill_after_a_checkpoint(command: list[str], output: Path) -> int:
    """Start ``command``; SIGKILL it once a checkpoint exists and a later step is logged; return the
    step of the newest checkpoint at the kill."""
    process = subprocess.Popen(command, cwd=ROOT, env=_deterministic_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            saved = sorted((output / "checkpoints").glob("step-*"))
            logged = (output / "log.jsonl").read_text().count("\n") if saved else 0
            if saved and logged > int(saved[-1].name.removeprefix("step-")):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return int(sorted((output / "checkpoints").glob("step-*"))[-1].name.removeprefix("step-"))
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.kill()
    raise AssertionError(f"the run was not killed between checkpoints: {process.stderr.read()[-2000:]}")


def _comparable_log(output: Path) -> list[dict]:
    """The log without wall-clock fields."""
    return [{k: v for k, v in record.items() if k != "samples_per_s"} for record in _read_log(output)]


def test_a_run_killed_between_checkpoints_resumes_bit_identically(tmp_path, one_thread):
    """SIGKILL after a checkpoint and a later logged step, then ``--resume``: the final parameters and the
    whole log (but wall-clock rates) equal those of an uninterrupted run (in this process: one fewer
    start-up). The resumed run must not draw from the restored RNG when it creates its data iterator,
    and must cut the log back to its checkpoint."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    resume_step = _kill_after_a_checkpoint(_train_command(killed), killed)
    assert not (killed / "final").exists()
    resumed = subprocess.run(
        _train_command(killed, "--resume"), cwd=ROOT, env=_deterministic_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"at step {resume_step}" in resumed.stdout
    assert main(_train_command(full)[3:]) == 0
    expected, got = XSamModel.from_pretrained(full / "final"), XSamModel.from_pretrained(killed / "final")
    for (name, want), (_, have) in zip(expected.state_dict().items(), got.state_dict().items(), strict=True):
        assert torch.equal(have, want), name
    assert _comparable_log(killed) == _comparable_log(full)
