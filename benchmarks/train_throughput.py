"""Training throughput (samples/s, all processes together) of ``xsam train`` at 1 and 2 processes.

Each run is ``accelerate launch ... -m xsam.cli train`` in a subprocess on the checked-in COCO panoptic
fixture (two sources ``a`` and ``b``); samples/s is read from ``log.jsonl`` (``samples_per_s`` of every
step after the first, which includes warm-up). On a machine without GPUs the processes are CPU ranks
(gloo, ``ACCELERATE_USE_CPU=1``), one intra-op thread each unless ``--threads`` says otherwise.

    python benchmarks/train_throughput.py --steps 10
    python benchmarks/train_throughput.py --preset official --stage mixed_finetune --processes 1 2 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "formats"
PANOPTIC = "coco_panoptic:root=coco,annotations=panoptic.json,png_dir=panoptic,image_dir=images"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(processes: int, args: argparse.Namespace, output: Path) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", args.mixed_precision, "--dynamo_backend", "no"]
    if processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(_free_port())]
    command += [
        "-m",
        "xsam.cli",
        "train",
        "--stage",
        args.stage,
        "--preset",
        args.preset,
        "--output",
        str(output),
    ]
    command += ["--data", f"{PANOPTIC},name=a", "--data", f"{PANOPTIC},name=b", "--data-root", str(DATA)]
    command += ["--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--log-every", "1"]
    command += ["--num-points", str(args.num_points), "--mixed-precision", args.mixed_precision]
    env = dict(os.environ)
    import torch

    if not torch.cuda.is_available():
        env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
        if processes == 1:
            command.insert(3, "--cpu")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    steps = [record for record in records if "step" in record]
    ranks = len(steps[0]["sources"])
    rates = [record["samples_per_s"] for record in steps[1:]] or [steps[0]["samples_per_s"]]
    return {"processes": ranks, "samples_per_s": statistics.mean(rates), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    parser.add_argument("--stage", default="mixed_finetune")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (CPU runs)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for processes in args.processes:
            rows.append(run(processes, args, Path(folder) / f"p{processes}"))
    print(
        f"xsam train, preset {args.preset}, stage {args.stage}, batch {args.batch_size}/process, "
        f"{args.steps} steps, num_points {args.num_points}"
    )
    print(f"{'processes':>9} {'samples/s':>10} {'speed-up':>9} {'wall s':>8}")
    base = rows[0]["samples_per_s"]
    for row in rows:
        speedup = row["samples_per_s"] / base
        print(f"{row['processes']:>9} {row['samples_per_s']:>10.2f} {speedup:>8.2f}x {row['wall_s']:>8.1f}")


if __name__ == "__main__":
    main()
