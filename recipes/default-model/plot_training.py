"""Plot the loss curves of one or more ``xsam train`` runs (their ``log.jsonl``) into one PNG.

    python recipes/default-model/plot_training.py runs/s1 runs/s2 runs/s3 --out docs/default-model/losses.png

Runs are drawn one after another on a shared step axis (stage 1, then 2, then 3), one panel per loss
term found in the logs (``loss``, ``loss_lm``, ``loss_seg``), with a moving average over noisy steps.
Needs matplotlib (in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LOSS_KEYS = ("loss", "loss_seg", "loss_lm")


def read_steps(run: Path) -> list[dict]:
    log = run / "log.jsonl" if run.is_dir() else run
    if not log.is_file():
        raise FileNotFoundError(f"no training log at {log}")
    return [record for record in map(json.loads, log.read_text().splitlines()) if "step" in record]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (the first points average what exists so far)."""
    if window <= 1:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    starts = np.maximum(np.arange(len(values)) - window + 1, 0)
    return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(values) + 1) - starts)


def plot(runs: list[Path], out: Path, *, window: int = 25) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [(run, read_steps(run)) for run in runs]
    keys = [key for key in LOSS_KEYS if any(key in record for _, steps in logs for record in steps)]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    offset = 0
    for index, (run, steps) in enumerate(logs):
        # a run folder, its log.jsonl, or a copied log named after its stage (logs/s3.jsonl)
        label = run.parent.name if run.name == "log.jsonl" else run.name.removesuffix(".jsonl")
        colour = f"C{index}"  # one colour per run in every panel
        for axis, key in zip(axes[0], keys, strict=True):
            points = [(record["step"], record[key]) for record in steps if key in record]
            if points:
                x, y = (np.array(values, dtype=float) for values in zip(*points, strict=True))
                axis.plot(x + offset, y, alpha=0.2, linewidth=0.6, color=colour)
                axis.plot(x + offset, smooth(y, window), label=label, linewidth=1.6, color=colour)
        offset += max((record["step"] for record in steps), default=0)
    for axis, key in zip(axes[0], keys, strict=True):
        axis.set_title(key)
        axis.set_xlabel("optimisation step (stages in sequence)")
        axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or log.jsonl files), in order")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--window", type=int, default=25, help="moving-average window in steps")
    args = parser.parse_args()
    print(plot(args.runs, args.out, window=args.window))


if __name__ == "__main__":
    main()
