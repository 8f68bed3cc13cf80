"""Package a trained default model into the source tree (the last step of train.sh).

    python recipes/default-model/package.py runs/default-model

Takes ``WORK/s3/final``, drops the stage-1 closed-set head (stage 3 segments through the LLM's
class embeddings; the head is unused), stores the weights in float16 (``XSamModel.from_pretrained(
"default")`` loads them as float32) without a tokenizer copy (the bundled Phi-3 tokenizer is used),
and writes them to ``src/xsam/assets/default-model``. The evaluation results, the loss curves, the
stages' ``log.jsonl`` (s0–s3, s2b where run) go to ``docs/default-model/``, with stage 1's
closed-set results (``results_stage1.*``) where the run has them; the contact sheet of ``xsam predict
--examples`` (run with the packaged weights) goes to ``docs/examples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from xsam.cli import main as xsam_main
from xsam.data.synthetic.scene import SHAPES, STUFF
from xsam.inference.predictor import VOCABULARY_FILE
from xsam.modeling.xsam import XSamModel

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "src" / "xsam" / "assets" / "default-model"
DOCS = ROOT / "docs" / "default-model"
EXAMPLES = ROOT / "docs" / "examples.png"  # the contact sheet shown in the README
MAX_BYTES = 50 * 1024 * 1024


def package(work: Path) -> Path:
    trained = XSamModel.from_pretrained(work / "s3" / "final", dtype=torch.float32)
    config = dataclasses.replace(
        trained.config,
        mask_decoder=dataclasses.replace(trained.config.mask_decoder, num_closed_set_classes=None),
    )
    model = XSamModel(config)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("closed_set_head.")}
    model.load_state_dict(state, strict=True)
    model.to(torch.float16).save_pretrained(TARGET)
    # the categories it knows, offered by the demo's category helper
    vocabulary = {"ins": list(SHAPES), "sem": list(STUFF)}
    (TARGET / VOCABULARY_FILE).write_text(json.dumps(vocabulary, indent=1) + "\n")
    size = sum(path.stat().st_size for path in TARGET.iterdir())
    if size > MAX_BYTES:
        raise SystemExit(f"{TARGET} is {size / 2**20:.1f} MiB, over the 50 MiB budget")
    DOCS.mkdir(parents=True, exist_ok=True)
    for source, name in (
        (work / "eval" / "results.json", "results.json"),
        (work / "eval" / "results.md", "results.md"),
        (work / "eval_s1" / "results.json", "results_stage1.json"),
        (work / "eval_s1" / "results.md", "results_stage1.md"),
        (work / "losses.png", "losses.png"),
    ):
        if source.is_file():
            shutil.copy(source, DOCS / name)
    (DOCS / "logs").mkdir(exist_ok=True)
    for stage in ("s0", "s1", "s2", "s2b", "s3"):
        if stage in ("s1", "s2", "s3") or (work / stage / "log.jsonl").is_file():  # optional stages
            shutil.copy(work / stage / "log.jsonl", DOCS / "logs" / f"{stage}.jsonl")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "examples"
        if xsam_main(["predict", "--examples", "--model", str(TARGET), "--out", str(out)]) != 0:
            raise SystemExit("xsam predict --examples failed with the packaged model")
        shutil.copy(out / "examples.png", EXAMPLES)
    print(f"{TARGET}: {size / 2**20:.1f} MiB")
    return TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the WORK_DIR of train.sh")
    package(parser.parse_args().work)


if __name__ == "__main__":
    main()
