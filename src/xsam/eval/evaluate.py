"""Run benchmarks: prompt every sample through :class:`~xsam.inference.XSamPredictor`, score, write.

Protocol (the official one): teacher-forced answers for every benchmark but GCG, which generates
greedily; the evaluation thresholds of the task table; SigLIP pad-to-square as the model config
says. Unlike the official code, prompts are deterministic: the first question and answer
template of each list, recorded in the results, so two runs give identical numbers.

Several processes (``accelerate launch``) split the images between them: samples of one image stay
on one process (its encoding is cached), the metric states are gathered and merged on the main
process, which alone writes the results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..inference.predictor import XSamPredictor
from ..processing import STORED_FRAME, load_image, write_atomically
from ..tasks.base import EvalSample
from ..tasks.registry import task_handler
from .benchmarks import Benchmark, SuiteEntry, get_benchmark, resolve_paths
from .evaluators import Evaluator, build_evaluator

UNITS = "fraction"
"""Every metric in the results is a fraction in [0, 1] (CIDEr on its own scale); tables show percent."""


@dataclass
class BenchmarkResult:
    """The numbers of one benchmark run and how they were obtained."""

    benchmark: str
    task: str
    metrics: dict[str, float]
    num_samples: int
    headline: str
    protocol: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shards(samples: Sequence[EvalSample], index: int, count: int) -> list[EvalSample]:
    """This process's samples: whole images, dealt round-robin in order of first appearance."""
    images: dict[str, int] = {}
    mine = []
    for sample in samples:
        position = images.setdefault(str(sample.image_path), len(images))
        if position % count == index:
            mine.append(sample)
    return mine


def protocol(benchmark: Benchmark, evaluator: Evaluator) -> dict[str, Any]:
    """What the numbers depend on besides the model: templates, thresholds, generation.

    The templates are the first of each list the task prompts with (reasoning: the long or the short
    list by the query's ``is_sentence`` flag).
    """
    handler = task_handler(benchmark.task)
    info: dict[str, Any] = {
        "teacher_forced": not handler.generates,
        "question_templates": [question.get(0) for question in handler.questions],
        "answer_template": None if handler.answers is None or handler.generates else handler.answers.get(0),
        "score_threshold": evaluator.threshold,
        "mask_threshold": handler.mask_threshold,
        **dict(benchmark.options),
    }
    if handler.generates:
        info["max_new_tokens"] = evaluator.samples[0].request["max_new_tokens"]
    info.update(evaluator.protocol())
    return info


def evaluate_benchmark(
    predictor: XSamPredictor,
    benchmark: str | Benchmark,
    *,
    data_root: str | Path | None = None,
    paths: Mapping[str, str] | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    save_predictions: bool = False,
    max_new_tokens: int = 512,
    progress: bool = True,
) -> BenchmarkResult:
    """Evaluate one benchmark; in a multi-process launch every process must call this.

    Args:
        predictor: wraps the model (on its device and dtype).
        benchmark: a :class:`Benchmark` or its name / official ``data_name``.
        data_root: the folder the benchmark's default paths are relative to.
        paths: overrides of the benchmark's file paths (keys of ``Benchmark.paths``).
        limit: evaluate only the first ``limit`` samples (in dataset order).
        out_dir: with ``save_predictions``, predictions go to ``out_dir/<benchmark>/``.
        save_predictions: also write the predictions in the format ``xsam score`` reads (COCO
            results, COCO panoptic, label PNGs, or RLE lists; see ``docs/evaluation.md``).
        max_new_tokens: generation budget of GCG.
        progress: show a progress bar (main process only).

    Raises:
        ValueError / FileNotFoundError: unknown benchmark or path key, missing files, no samples.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState()
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if save_predictions and out_dir is None:
        raise ValueError("save_predictions needs out_dir")
    evaluator = build_evaluator(
        benchmark, resolve_paths(benchmark, data_root, paths), max_new_tokens=max_new_tokens
    )
    samples = evaluator.samples[:limit] if limit is not None else evaluator.samples
    folder = Path(out_dir) / benchmark.name if out_dir is not None else None
    start = time.perf_counter()
    entries: list[dict[str, Any]] = []
    current_image = None
    bar = tqdm(
        _shards(samples, state.process_index, state.num_processes),
        desc=benchmark.name,
        disable=not (progress and state.is_main_process),
    )
    for sample in bar:
        if sample.image_path != current_image:
            # benchmark annotations are in the stored frame: no EXIF rotation, whatever the predictor's policy
            predictor.set_image(load_image(sample.image_path, policy=STORED_FRAME))
            current_image = sample.image_path
        prediction = predictor.predict(**evaluator.request(sample))
        evaluator.update(sample, prediction)
        if save_predictions:
            entries.extend(evaluator.save(sample, prediction, folder))
    predictor.reset_image()
    metrics = gather_object([evaluator.metric])
    for metric in metrics[1:]:
        evaluator.merge(metric)
    entries = gather_object(entries) if save_predictions else []
    result = BenchmarkResult(
        benchmark=benchmark.name,
        task=benchmark.task,
        metrics=evaluator.compute() if state.is_main_process else {},
        num_samples=len(samples),
        headline=benchmark.headline,
        protocol=protocol(benchmark, evaluator),
        seconds=round(time.perf_counter() - start, 3),
    )
    if save_predictions and state.is_main_process:
        result.files["predictions"] = str(evaluator.write_predictions(entries, folder))
    return result


def suite_summary(entries: Sequence[SuiteEntry], results: Sequence[BenchmarkResult]) -> dict[str, float]:
    """The flat ``{summary key: value}`` of a suite run (e.g. ``pq``, ``refer_ciou``, ``vgd_ap_box``)."""
    by_name = {result.benchmark: result for result in results}
    return {
        key: by_name[entry.benchmark.name].metrics[metric]
        for entry in entries
        for key, metric in entry.summary.items()
    }


def write_results(
    results: Sequence[BenchmarkResult],
    out_dir: str | Path,
    *,
    model: str = "",
    summary: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """``out_dir/results.json`` (every number, ``units`` stated; a suite's flat ``summary`` keys at the
    top) and ``out_dir/results.md`` (tables in percent)."""
    out_dir = Path(out_dir)
    payload: dict[str, Any] = {"model": model, "units": UNITS}
    if summary is not None:
        payload.update(summary)
    payload["benchmarks"] = {result.benchmark: result.to_dict() for result in results}
    table = results_table(results)
    if summary is not None:
        table = summary_table(summary) + "\n\n" + table
    return {
        name: write_atomically(out_dir / name, text + "\n")
        for name, text in (("results.json", json.dumps(payload, indent=2)), ("results.md", table))
    }


def results_table(results: Sequence[BenchmarkResult]) -> str:
    """A markdown table: one row per benchmark, the headline metric first, values in percent."""
    lines = ["| benchmark | task | samples | headline | metrics (%) |", "|---|---|---:|---|---|"]
    for result in results:
        headline = result.metrics.get(result.headline)
        shown = "n/a" if headline is None else _percent(result.headline, headline)
        others = ", ".join(f"{key} {_percent(key, value)}" for key, value in result.metrics.items())
        lines.append(
            f"| {result.benchmark} | {result.task} | {result.num_samples} | "
            f"{result.headline} {shown} | {others} |"
        )
    lines.append("")
    lines.append("Values are percent (CIDEr ×100 as usual); `results.json` holds the fractions.")
    return "\n".join(lines)


def summary_table(summary: Mapping[str, float]) -> str:
    """A two-column markdown table of a suite's summary keys, in percent."""
    lines = ["| metric | value (%) |", "|---|---:|"]
    lines += [f"| {key} | {_percent(key, value)} |" for key, value in summary.items()]
    return "\n".join(lines)


def _percent(key: str, value: float) -> str:
    if isinstance(value, float) and value != value:  # NaN
        return "nan"
    if key in ("n", "n_th", "n_st"):
        return str(int(value))
    if value < 0:  # pycocotools' -1: no ground truth in that size bucket
        return "n/a"
    return f"{100 * value:.2f}"
