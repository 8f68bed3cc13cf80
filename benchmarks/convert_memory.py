"""Peak memory of ``xsam convert`` (and of loading its output) on a full-size official checkpoint.

Builds a random checkpoint with the release's key names and shapes (4.62 B parameters, ~9.2 GB in
bf16), saved the way the official one is (``torch.save`` of a flat state dict), then runs
``xsam convert`` and ``XSamModel.from_pretrained`` each in its own subprocess and reports their peak
resident memory (``ru_maxrss`` of that child, plus the largest anonymous / file-backed parts seen by
polling ``/proc/<pid>/status``) and wall time. Needs about 2.2x the checkpoint size of free disk.

    python benchmarks/convert_memory.py [--dtype bf16|fp32] [--tmpdir DIR] [--keep] [--no-load]
                                        [--checkpoint EXISTING.bin]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Our key -> the official key: the inverse of RENAME_RULES in xsam/convert/official.py, kept
# separate (as in tests/convert/test_convert.py) so the benchmark feeds the converter what the release holds.
OURS_TO_OFFICIAL = [
    (r"image_encoder\.siglip\.(.+)", r"visual_encoder.vision_model.\1"),
    (r"image_projector\.layers\.(.+)", r"visual_projector.model.\1"),
    (r"seg_projector\.layers\.(.+)", r"seg_projector.model.\1"),
    (r"llm_projector\.layers\.(.+)", r"llm_projector.model.\1"),
    (r"connector\.levels\.(\d+)\.layers\.(.+)", r"seg_connector.model.\1.model.\2"),
    (r"segmentation_encoder\.sam\.vision_encoder\.(.+)", r"segmentor.encoder.\1"),
    (r"pixel_decoder\.lateral_convs\.0\.(.+)", r"segmentor.pixel_decoder.adapter_1.\1"),
    (r"pixel_decoder\.output_convs\.0\.(.+)", r"segmentor.pixel_decoder.layer_1.\1"),
    (r"pixel_decoder\.(.+)", r"segmentor.pixel_decoder.\1"),
    (r"mask_decoder\.query_features\.(.+)", r"segmentor.decoder.queries_features.\1"),
    (r"mask_decoder\.query_position_embeddings\.(.+)", r"segmentor.decoder.queries_embedder.\1"),
    (r"mask_decoder\.level_embed\.(.+)", r"segmentor.decoder.level_embed.\1"),
    (r"mask_decoder\.layers\.(.+)", r"segmentor.decoder.decoder.layers.\1"),
    (r"mask_decoder\.norm\.(.+)", r"segmentor.decoder.decoder.layernorm.\1"),
    (
        r"mask_decoder\.mask_embedder\.(\d+)\.(.+)",
        r"segmentor.decoder.decoder.mask_predictor.mask_embedder.\1.0.\2",
    ),
    (r"class_head\.logit_scale", r"segmentor.logit_scale"),
    (r"class_head\.background\.weight", r"bg_embeds.weight"),
    (r"language_model\.(.+)", r"llm.\1"),
]
# In the release but not in our model (SAM's unused prompt-encoder buffer); the converter drops it.
EXTRA_OFFICIAL = {"segmentor.shared_image_embedding.positional_embedding": (2, 128)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# safetensors (0.8) hands out memory-mapped tensors whose pages arrive on first use, so loading alone
# touches almost nothing; the second snippet reads every weight once, as a first forward pass would.
LOAD_SNIPPET = "import sys; from xsam.modeling.xsam import XSamModel; XSamModel.from_pretrained(sys.argv[1])"
LOAD_AND_READ_SNIPPET = LOAD_SNIPPET.replace(
    "XSamModel.from_pretrained(sys.argv[1])",
    "model = XSamModel.from_pretrained(sys.argv[1]); [p.sum() for p in model.parameters()]",
)


def official_key(key: str) -> str:
    for pattern, template in OURS_TO_OFFICIAL:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    raise KeyError(f"no official name for {key}")


def official_layout(dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Official key -> (shape, dtype) of the released stage-3 model; floating tensors in ``dtype``."""
    from xsam.config import XSamConfig
    from xsam.modeling.serialization import tied_aliases
    from xsam.modeling.xsam import XSamModel

    with torch.device("meta"):
        model = XSamModel(XSamConfig.official())
    aliases = tied_aliases(model)
    layout = {
        official_key(name): (tuple(t.shape), dtype if t.is_floating_point() else t.dtype)
        for name, t in model.state_dict().items()
        if name not in aliases
    }
    layout.update({name: (shape, dtype) for name, shape in EXTRA_OFFICIAL.items()})
    return layout


def write_checkpoint(path: Path, dtype_name: str) -> None:
    """Random full-size checkpoint at ``path`` (run in its own process so its memory is freed)."""
    torch.manual_seed(0)
    state = {}
    for name, (shape, dtype) in official_layout(DTYPES[dtype_name]).items():
        tensor = torch.empty(shape, dtype=dtype)
        state[name] = tensor.normal_(std=0.02) if dtype.is_floating_point else tensor.zero_()
    torch.save(state, path)


@dataclass
class Peak:
    """Peak memory of one child process, in bytes, and its wall time in seconds."""

    max_rss: int = 0  # ru_maxrss of the child: the kernel's own high-water mark
    max_anon: int = 0  # largest RssAnon seen while polling (heap: copies the program made)
    max_file: int = 0  # largest RssFile seen while polling (memory-mapped file pages)
    seconds: float = 0.0
    returncode: int = 0


def _status_bytes(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(value) * 1024 for key, value in re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}


def measure(command: list[str], *, interval: float = 0.05) -> Peak:
    """Run ``command``, polling its memory until it exits; return its peaks."""
    peak = Peak()
    start = time.perf_counter()
    process = subprocess.Popen(command)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            status = _status_bytes(process.pid)
            peak.max_anon = max(peak.max_anon, status.get("RssAnon", 0))
            peak.max_file = max(peak.max_file, status.get("RssFile", 0) + status.get("RssShmem", 0))
            time.sleep(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would fold in every earlier child)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    peak.seconds = time.perf_counter() - start
    peak.max_rss = usage.ru_maxrss * 1024  # KiB on Linux
    peak.returncode = process.returncode
    return peak


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _directory_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def report(file_bytes: int, out_bytes: int, rows: dict[str, Peak]) -> str:
    lines = [
        f"checkpoint file: {_gb(file_bytes)}    converted directory: {_gb(out_bytes)}",
        "| step | peak RSS | peak / file size | max anon RSS | max file RSS | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for step, peak in rows.items():
        lines.append(
            f"| {step} | {_gb(peak.max_rss)} | {peak.max_rss / file_bytes:.2f}x | {_gb(peak.max_anon)} "
            f"| {_gb(peak.max_file)} | {peak.seconds:.0f} s |"
        )
    return "\n".join(lines)


def make_checkpoint(path: Path, dtype_name: str) -> None:
    """Write the random checkpoint in a child process, so none of its memory stays in this one."""
    start = time.perf_counter()
    maker = multiprocessing.get_context("spawn").Process(target=write_checkpoint, args=(path, dtype_name))
    maker.start()
    maker.join()
    if maker.exitcode != 0:
        raise RuntimeError(f"writing the checkpoint failed (exit code {maker.exitcode})")
    print(f"wrote {path} ({_gb(path.stat().st_size)}) in {time.perf_counter() - start:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="xsam-convert-memory-", dir=args.tmpdir))
    out = work / "converted"
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "pytorch_model.bin"
    try:
        if not args.checkpoint:
            make_checkpoint(checkpoint, args.dtype)
        file_bytes = checkpoint.stat().st_size

        convert = [sys.executable, "-m", "xsam.cli", "convert", "--checkpoint", str(checkpoint)]
        rows = {"xsam convert": measure([*convert, "--out", str(out)])}
        if rows["xsam convert"].returncode != 0:
            raise RuntimeError("xsam convert failed")
        if not args.no_load:
            rows["from_pretrained"] = measure([sys.executable, "-c", LOAD_SNIPPET, str(out)])
            rows["from_pretrained + read all weights"] = measure(
                [sys.executable, "-c", LOAD_AND_READ_SNIPPET, str(out)]
            )
        print(report(file_bytes, _directory_bytes(out), rows))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="checkpoint dtype")
    parser.add_argument("--tmpdir", help="where the checkpoint and output go (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and converted folder")
    parser.add_argument("--no-load", action="store_true", help="skip measuring from_pretrained")
    parser.add_argument("--checkpoint", help="measure this existing official checkpoint instead (kept)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
