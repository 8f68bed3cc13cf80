"""``xsam eval``: a model on benchmarks (COCO, ADE20K, RefCOCO, ReasonSeg, GCG, ...) or a suite."""

from __future__ import annotations

import argparse
from typing import Any

from .common import BENCHMARKS, DTYPES, LazyHelpFormatter, key_values, load_model, positive

SUITES = ("synthetic", "synthetic_closed_set")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "eval",
        help="evaluate a model on segmentation benchmarks (COCO, ADE20K, RefCOCO, ReasonSeg, GCG, ...)",
        description=(
            "Evaluate with the official protocol (teacher-forced answers except GCG; evaluation "
            "thresholds) and deterministic prompts (the first template of each list). Writes "
            "OUT/results.json (fractions) and OUT/results.md (percent). Multi-GPU: "
            "'accelerate launch -m xsam.cli eval ...' splits the images between processes."
        ),
        epilog=(
            "benchmarks (default files relative to --data-root, the official datas/ layout; "
            f"override with --path key=value):\n{BENCHMARKS}"
        ),
        formatter_class=LazyHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="a save_pretrained directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--benchmark",
        action="append",
        metavar="NAME",
        help="benchmark name or official data_name (repeatable, or comma-separated)",
    )
    which.add_argument(
        "--suite",
        choices=SUITES,
        help="a group of benchmarks with flat summary keys: 'synthetic' = every task on the world of "
        "'xsam synth'; 'synthetic_closed_set' = a stage-1 model's closed-set segmentor (no LLM) on its "
        "panoptic, semantic and instance benchmarks",
    )
    parser.add_argument("--data-root", metavar="DIR", help="folder the benchmark paths are relative to")
    parser.add_argument(
        "--path", action="append", metavar="KEY=PATH", help="override one of the benchmark's file paths"
    )
    parser.add_argument("--limit", type=positive, metavar="N", help="evaluate the first N samples only")
    parser.add_argument("--out", default="xsam-eval", metavar="DIR", help="output folder")
    parser.add_argument(
        "--save-predictions",
        action="store_true",
        help="also write OUT/<benchmark>/predictions (the formats 'xsam score' reads)",
    )
    parser.add_argument("--max-new-tokens", type=positive, default=512, help="GCG generation budget")
    parser.add_argument("--device", help="torch device (default: this process's accelerator or cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype")
    return parser


def _benchmarks(args: argparse.Namespace) -> tuple[list, list | None]:
    """The benchmarks to run, and the suite's entries when a suite was asked for."""
    from ..eval.benchmarks import get_benchmark, get_suite

    if args.suite:
        suite = get_suite(args.suite)
        return [entry.benchmark for entry in suite], suite
    names = [name.strip() for text in args.benchmark for name in text.split(",") if name.strip()]
    return [get_benchmark(name) for name in names], None


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..distributed import finish_processes
    from ..eval.evaluate import suite_summary
    from ..inference.predictor import XSamPredictor

    state = PartialState()
    benchmarks, suite = _benchmarks(args)
    paths = key_values(args.path, "--path")
    if paths and len(benchmarks) > 1:
        raise ValueError("--path applies to one benchmark at a time")
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device or state.device))
    results = []
    try:
        for benchmark in benchmarks:
            results.append(_run_one(predictor, benchmark, args, paths))
    except (FileNotFoundError, ValueError) as error:  # keep what finished, and say which one failed
        if results and state.is_main_process:
            written = _write(results, args, None)
            print(f"wrote the {len(results)} finished benchmark(s) to {written['results.json']}")
        raise type(error)(f"{benchmark.name}: {error}") from error
    if state.is_main_process:
        summary = suite_summary(suite, results) if suite is not None else None
        written = _write(results, args, summary)
        if summary is not None:
            print(", ".join(f"{key} {100 * value:.2f}" for key, value in summary.items()) + " (%)")
        print(f"results: {written['results.json']} and {written['results.md']}")
    finish_processes()
    return 0


def _run_one(predictor: Any, benchmark: Any, args: argparse.Namespace, paths: dict[str, str]) -> Any:
    from accelerate import PartialState

    from ..eval.evaluate import evaluate_benchmark

    result = evaluate_benchmark(
        predictor,
        benchmark,
        data_root=args.data_root,
        paths=paths,
        limit=args.limit,
        out_dir=args.out,
        save_predictions=args.save_predictions,
        max_new_tokens=args.max_new_tokens,
    )
    if PartialState().is_main_process:
        shown = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics.items())
        print(f"{benchmark.name} ({result.num_samples} samples): {shown}")
    return result


def _write(results: list, args: argparse.Namespace, summary: dict[str, float] | None) -> dict:
    from ..eval.evaluate import write_results

    return write_results(results, args.out, model=str(args.model), summary=summary)
