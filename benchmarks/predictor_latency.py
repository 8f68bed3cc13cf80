"""Cold vs cached prompt latency of ``XSamPredictor``, per component, on random weights.

A cold prompt encodes the image (SigLIP, SAM, connector, pixel decoder), prefills the LLM over
``[<s>, <|user|>, image tokens]`` and then answers; a cached prompt on the same image runs only its
own tokens, the mask decoder and post-processing. The "uncached" row is what the official code does
for every prompt: the whole prompt through the LLM again (encoders reused here, so it is a lower bound).

    python benchmarks/predictor_latency.py --preset tiny
    python benchmarks/predictor_latency.py --preset official --dtype bf16   # ~9 GB RAM, minutes on CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from accelerate import init_empty_weights
from torch import nn

from xsam.config import XSamConfig
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel
from xsam.tokens import load_tokenizer

REQUESTS = {
    "referring": {"text": "the person on the left"},
    "generic (panoptic)": {"categories": "ins: person, dog, car; sem: sky, grass, road"},
    "interactive": {"points": [[200, 150]]},
}


def random_model(config: XSamConfig, dtype: torch.dtype, seed: int = 0) -> XSamModel:
    """The model with N(0, 0.02) weights, built without a float32 copy (fast at official size)."""
    with init_empty_weights(include_buffers=False):
        model = XSamModel(config)
    generator = torch.Generator().manual_seed(seed)
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower() or "norm" in module_name.split(".")[-1]
        for name, param in list(module.named_parameters(recurse=False)):
            if is_norm:  # realistic activations: norms start at weight 1, bias 0
                data = torch.full(param.shape, 1.0 if name == "weight" else 0.0, dtype=dtype)
            else:
                data = torch.empty(param.shape, dtype=dtype).normal_(0, 0.02, generator=generator)
            module._parameters[name] = nn.Parameter(data, requires_grad=False)
    return model.eval()


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each cached prompt (median)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    config = getattr(XSamConfig, args.preset)()
    build_time, model = timed(lambda: random_model(config, dtype))
    tokenizer = load_tokenizer()
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    cached = XSamPredictor(model, tokenizer)
    uncached = XSamPredictor(model, tokenizer, use_cache=False)

    print(
        f"preset={args.preset} dtype={args.dtype} threads={torch.get_num_threads()} image=640x480", flush=True
    )
    rows = []

    def report(name: str, seconds: float) -> None:
        rows.append((name, seconds))
        print(f"  {name:<50}{seconds:>10.3f}", flush=True)

    report("build random model", build_time)
    with torch.inference_mode():
        cold_encode, _ = timed(lambda: uncached.set_image(image))  # encoders only
        cold_total, _ = timed(
            lambda: (cached.set_image(image), cached.predict("referring", **REQUESTS["referring"]))
        )
    report("encode image (SigLIP + SAM + pixel decoder)", cold_encode)
    report("cold prompt: set_image + prefill + referring", cold_total)
    ratios = []
    for task, request in REQUESTS.items():
        name = task.split()[0]
        warm, _ = timed(lambda n=name, r=request: cached.predict(n, **r), args.repeats)
        full, _ = timed(lambda n=name, r=request: uncached.predict(n, **r), 1)
        report(f"cached prompt: {task}", warm)
        report(f"uncached prompt (whole LLM input): {task}", full)
        ratios.append((task, cold_total / warm, full / warm))

    print(f"\n{'step':<52}{'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<52}{seconds:>10.3f}")
    print(f"\n{'task':<24}{'cold / cached':>16}{'uncached / cached':>20}")
    for task, cold_ratio, full_ratio in ratios:
        print(f"{task:<24}{cold_ratio:>16.1f}{full_ratio:>20.1f}")


if __name__ == "__main__":
    main()
