"""The benchmarks of the paper: one table saying what each evaluates, where
its files live, how they are read and how they are scored.

Paths are relative to ``--data-root`` and follow the official ``datas/`` layout, so
a folder prepared for the official code works as is; any path can be overridden (``--path
key=value`` on the command line, ``paths=`` in Python). The official ``data_name`` of each benchmark
(e.g. ``coco_panoptic_genseg``) is accepted as an alias.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.formats.coco import read_coco_instances, read_coco_panoptic, read_semantic_pngs
from ..data.formats.gcg import read_gcg_eval
from ..data.formats.json_fields import load_json
from ..data.formats.reasonseg import read_reasonseg, split_queries
from ..data.formats.refer import read_refer
from ..data.formats.visual_prompts import read_coco_interactive, read_coco_vgd
from ..tasks.base import Metric
from ..tasks.records import Record
from ..tasks.task import Task
from ..tasks.visual_grounding import VISUAL_PROMPT_KINDS

PANOPTIC, SEMANTIC, INSTANCE, MASK_IOU, GCG, VGD = Metric


@dataclass(frozen=True)
class Benchmark:
    """One evaluation: a task on one split of one dataset, scored by one metric family.

    Attributes:
        name: the name ``xsam eval --benchmark`` takes.
        task: the task prompted (a :class:`Task` or the name of a registered task).
        metric: the :class:`~xsam.tasks.base.Metric` family that scores it.
        paths: file keys -> default paths relative to the data root (see :func:`resolve_paths`).
        options: reader and prompt settings (``dataset``, ``split``, ``query_type``, ``prompt_kind``).
        official_name: the official ``data_name`` (an accepted alias).
        headline: the metric papers report for it (first column of the markdown table).
        reader: reads the benchmark's records from its resolved paths (default: by metric family).
    """

    name: str
    task: str
    metric: Metric
    paths: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    official_name: str = ""
    headline: str = ""
    reader: Callable[[Benchmark, Mapping[str, Path]], list[Record]] | None = None

    def __post_init__(self) -> None:
        # plain strings: the task name as records and results spell it, the metric as an enum
        object.__setattr__(self, "task", getattr(self.task, "value", self.task))
        object.__setattr__(self, "metric", Metric(self.metric))

    def read(self, paths: Mapping[str, Path]) -> list[Record]:
        """The benchmark's records, read from ``paths`` (see :func:`resolve_paths`).

        Raises:
            FileNotFoundError / ValueError: missing or malformed files, or no records at all.
        """
        reader = self.reader or _default_reader(self)
        records = reader(self, paths)
        if not records:
            where = next(iter(paths.values()), "its files")
            raise ValueError(f"{self.name}: no samples found in {where}")
        return records


_COCO = "genseg_data/coco2017"
_COCO_PANOPTIC = {
    "annotations": f"{_COCO}/annotations/panoptic_val2017.json",
    "png_dir": f"{_COCO}/annotations/panoptic_val2017",
    "image_dir": f"{_COCO}/val2017",
}
_ADE = "ovseg_data/ade20k"
_ADE_PANOPTIC = {
    "annotations": f"{_ADE}/ade20k_panoptic_val.json",
    "png_dir": f"{_ADE}/ade20k_panoptic_val",
    "image_dir": f"{_ADE}/images/validation",
}
_GCG = "gcgseg_data/grand_f"
_VGD = "vgdseg_data/coco_vgd"


def _generic_benchmarks() -> list[Benchmark]:
    return [
        Benchmark("coco_panoptic", Task.GENERIC, PANOPTIC, _COCO_PANOPTIC, {}, "coco_panoptic_genseg", "pq"),
        # semantic ground truth = the panoptic PNGs painted with each segment's class (crowd included,
        # void -> 255), which is what Mask2Former's panoptic_semseg_val2017 converter writes
        Benchmark(
            "coco_semantic",
            Task.GENERIC,
            SEMANTIC,
            _COCO_PANOPTIC,
            {},
            "coco_panoptic_semantic_genseg",
            "miou",
        ),
        Benchmark(
            "coco_instance",
            Task.GENERIC,
            INSTANCE,
            {"annotations": f"{_COCO}/annotations/instances_val2017.json", "image_dir": f"{_COCO}/val2017"},
            {},
            "coco_instance_genseg",
            "ap",
        ),
        Benchmark(
            "ade20k_panoptic", Task.OPEN_VOCAB, PANOPTIC, _ADE_PANOPTIC, {}, "ade20k_panoptic_ovseg", "pq"
        ),
        Benchmark(
            "ade20k_semantic",
            Task.OPEN_VOCAB,
            SEMANTIC,
            {
                "annotations": _ADE_PANOPTIC["annotations"],  # the 150 class names and thing flags
                "label_dir": f"{_ADE}/annotations_detectron2/validation",
                "image_dir": _ADE_PANOPTIC["image_dir"],
            },
            {},
            "ade20k_semantic_ovseg",
            "miou",
        ),
        Benchmark(
            "ade20k_instance",
            Task.OPEN_VOCAB,
            INSTANCE,
            {"annotations": f"{_ADE}/ade20k_instance_val.json", "image_dir": _ADE_PANOPTIC["image_dir"]},
            {},
            "ade20k_instance_ovseg",
            "ap",
        ),
    ]


def _referring_benchmarks() -> list[Benchmark]:
    splits = {
        "refcoco": ("val", "testA", "testB"),
        "refcoco+": ("val", "testA", "testB"),
        "refcocog": ("val", "test"),
    }
    return [
        Benchmark(
            f"{dataset}_{split}",
            Task.REFERRING,
            MASK_IOU,
            {"dataset_dir": f"refseg_data/{dataset}", "image_dir": "refseg_data/images/train2014"},
            {"dataset": dataset, "split": split},
            f"{dataset}_{split}_refseg",
            "ciou",
        )
        for dataset, dataset_splits in splits.items()
        for split in dataset_splits
    ]


def _reasoning_benchmarks() -> list[Benchmark]:
    kinds = {"all": "", "phrase": "_short", "sentence": "_long"}
    return [
        Benchmark(
            f"reasonseg_{split}{suffix}",
            Task.REASONING,
            MASK_IOU,
            {"split_dir": f"reaseg_data/lisa/{split}"},
            {"query_type": query_type},
            f"{split}_reaseg" if not suffix else f"{split}_{query_type}_reaseg",
            "giou",
        )
        for split in ("val", "test")
        for query_type, suffix in kinds.items()
    ]


def _gcg_benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            f"gcg_{split}",
            Task.GCG,
            GCG,
            {
                "mask_gt": f"{_GCG}/annotations/val_test/{split}_gcg_coco_mask_gt.json",
                "caption_gt": f"{_GCG}/annotations/val_test/{split}_gcg_coco_caption_gt.json",
                "image_dir": f"{_GCG}/images/GranDf_HA_images/val_test",
            },
            {},
            f"{split}_gcgseg",
            "miou",
        )
        for split in ("val", "test")
    ]


def _visual_prompt_benchmarks() -> list[Benchmark]:
    interactive = [
        Benchmark(
            f"interactive_{kind}",
            Task.INTERACTIVE,
            MASK_IOU,
            {
                "json": "intseg_data/coco_int/annotations/coco_interactive_val_psalm.json",
                "image_dir": "intseg_data/coco_int/val2017",
            },
            {"prompt_kind": kind},
            f"{kind}_intseg",
            "giou",
        )
        for kind in VISUAL_PROMPT_KINDS
    ]
    vgd = [
        Benchmark(
            f"vgd_{kind}",
            Task.VGD,
            VGD,
            {
                "vgd_json": f"{_VGD}/annotations/vgdseg_val.json",
                "instances": f"{_VGD}/coco2017/annotations/instances_val2017.json",
                "image_dir": f"{_VGD}/coco2017/val2017",
            },
            {"prompt_kind": kind},
            f"{kind}_vgdseg",
            "ap",
        )
        for kind in VISUAL_PROMPT_KINDS
    ]
    return interactive + vgd


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        _generic_benchmarks()
        + _referring_benchmarks()
        + _reasoning_benchmarks()
        + _gcg_benchmarks()
        + _visual_prompt_benchmarks()
    )
}
"""Every benchmark by name, in the paper's order."""

_ALIASES = {benchmark.official_name: name for name, benchmark in BENCHMARKS.items()}


def get_benchmark(name: str) -> Benchmark:
    """A benchmark by its name or official ``data_name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    key = _ALIASES.get(name, name)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


@dataclass(frozen=True)
class SuiteEntry:
    """One benchmark of a suite and the flat summary keys it reports (summary key -> metric)."""

    benchmark: Benchmark
    summary: Mapping[str, str]


def _synthetic_entry(
    name: str, base: str, paths: dict[str, str], summary: dict[str, str], **options: Any
) -> SuiteEntry:
    benchmark = BENCHMARKS[base]
    return SuiteEntry(
        replace(benchmark, name=f"synthetic_{name}", paths=paths, options={**benchmark.options, **options}),
        summary,
    )


def _synthetic_generic(prefix: str = "", **options: Any) -> list[SuiteEntry]:
    """Panoptic, semantic and instance segmentation of the world's ``test`` split."""
    panoptic = {
        "annotations": "panoptic/panoptic_test.json",
        "png_dir": "panoptic/panoptic_test",
        "image_dir": "images/test",
    }
    instances = {"annotations": "instances/instances_test.json", "image_dir": "images/test"}
    return [
        _synthetic_entry(
            f"{prefix}panoptic", "coco_panoptic", panoptic, {"pq": "pq", "sq": "sq", "rq": "rq"}, **options
        ),
        _synthetic_entry(f"{prefix}semantic", "coco_semantic", panoptic, {"miou": "miou"}, **options),
        _synthetic_entry(
            f"{prefix}instance", "coco_instance", instances, {"ap": "ap", "ap50": "ap50"}, **options
        ),
    ]


def _synthetic_suite() -> list[SuiteEntry]:
    """The world of ``xsam synth``: every task on its held-out ``test`` split (``ov_test`` for the
    open-vocabulary compositions); paths follow the layout :mod:`xsam.data.synthetic` writes."""
    entry = _synthetic_entry
    entries = [
        *_synthetic_generic(),
        entry(
            "open_vocab",
            "ade20k_panoptic",
            {
                "annotations": "open_vocab/panoptic_ov_test.json",
                "png_dir": "open_vocab/panoptic_ov_test",
                "image_dir": "images/ov_test",
            },
            {"ov_pq": "pq"},
        ),
        entry(
            "referring",
            "refcoco_val",
            {"dataset_dir": "refer", "image_dir": "images"},
            {"refer_ciou": "ciou", "refer_giou": "giou"},
            split="test",
        ),
        entry("reasoning", "reasonseg_test", {"split_dir": "reasonseg/test"}, {"reason_giou": "giou"}),
        entry(
            "gcg",
            "gcg_test",
            {
                "mask_gt": "gcg/val_test/test_gcg_coco_mask_gt.json",
                "caption_gt": "gcg/val_test/test_gcg_coco_caption_gt.json",
                "image_dir": "images/test",
            },
            {"gcg_ap50": "ap50", "gcg_miou": "miou", "gcg_meteor": "meteor", "gcg_cider": "cider"},
        ),
    ]
    for kind in VISUAL_PROMPT_KINDS:
        entries.append(
            entry(
                f"interactive_{kind}",
                f"interactive_{kind}",
                {"json": "interactive/coco_interactive_test_psalm.json", "image_dir": "images/test"},
                {f"interactive_miou_{kind}": "giou"},
            )
        )
    for kind in VISUAL_PROMPT_KINDS:
        entries.append(
            entry(
                f"vgd_{kind}",
                f"vgd_{kind}",
                {
                    "vgd_json": "vgd/vgd_test.json",
                    "instances": "instances/instances_test.json",
                    "image_dir": "images/test",
                },
                {f"vgd_ap_{kind}": "ap"},
            )
        )
    return entries


SUITES: dict[str, list[SuiteEntry]] = {
    "synthetic": _synthetic_suite(),
    "synthetic_closed_set": _synthetic_generic("closed_set_", closed_set=True),
}
"""Named groups of benchmarks with the flat summary keys they report (``xsam eval --suite``).
``synthetic_closed_set`` scores a stage-1 model's closed-set segmentor (no LLM) on the world's
generic benchmarks; the head's classes are the world's categories in id order, as stage 1 trains them."""


def get_suite(name: str) -> list[SuiteEntry]:
    """A suite by name.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]


def resolve_paths(
    benchmark: Benchmark, data_root: str | Path | None, overrides: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """The benchmark's file paths: defaults (or ``overrides``) joined to ``data_root`` when relative.

    Raises:
        ValueError: an override names a key the benchmark does not have (the message lists its keys).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(benchmark.paths))
    if unknown:
        raise ValueError(
            f"{benchmark.name}: unknown path key(s) {', '.join(unknown)}; "
            f"its keys are {', '.join(benchmark.paths)}"
        )
    root = Path(data_root).expanduser() if data_root is not None else Path()
    resolved = {}
    for key, default in benchmark.paths.items():
        path = Path(overrides.get(key, default)).expanduser()
        resolved[key] = path if path.is_absolute() else root / path
    return resolved


def benchmarks_help() -> str:
    """One line per benchmark: name, task, headline metric and default files (for ``--help``)."""
    lines = []
    for name, benchmark in BENCHMARKS.items():
        files = ", ".join(f"{key}={path}" for key, path in benchmark.paths.items())
        lines.append(f"  {name} ({benchmark.task}, {benchmark.headline}): {files}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ readers
def _read_panoptic(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    task = benchmark.task
    return read_coco_panoptic(paths["annotations"], paths["png_dir"], paths["image_dir"], task=task)


def _read_semantic(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    """COCO panoptic PNGs (painted per class), or label PNGs with the class list of a panoptic JSON."""
    if "png_dir" in paths:
        return _read_panoptic(benchmark, paths)
    classes = panoptic_classes(paths["annotations"])
    records = read_semantic_pngs(paths["image_dir"], paths["label_dir"], classes, task=benchmark.task)
    for record in records:
        record.extra["category_ids"] = list(range(len(classes)))
    return records


def panoptic_classes(path: Path) -> list[tuple[str, bool]]:
    """``(name, is_thing)`` in id order from a COCO-panoptic-style JSON's ``categories``."""
    data = load_json(path)
    categories = data.get("categories") if isinstance(data, Mapping) else None
    if not categories:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'categories' list")
    ordered = sorted(categories, key=lambda category: category["id"])
    return [(str(category["name"]), bool(category.get("isthing", 0))) for category in ordered]


def _read_instances(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    return read_coco_instances(paths["annotations"], paths["image_dir"], task=benchmark.task)


def _read_mask_iou(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    """Referring: one record per sentence; reasoning: one per query; interactive: per image."""
    options = benchmark.options
    if benchmark.task == Task.REFERRING:
        return read_refer(
            paths["dataset_dir"],
            dataset=options["dataset"],
            split=options["split"],
            image_dir=paths["image_dir"],
            group_by_image=False,
        )
    if benchmark.task == Task.REASONING:
        return split_queries(read_reasonseg(paths["split_dir"], query_type=options["query_type"]))
    return read_coco_interactive(paths["json"], paths["image_dir"])


def _read_gcg(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    return read_gcg_eval(paths["mask_gt"], paths["caption_gt"], paths["image_dir"])


def _read_vgd(benchmark: Benchmark, paths: Mapping[str, Path]) -> list[Record]:
    """VGD prompts from their file, or synthesised from the instances when the file is absent."""
    return read_coco_vgd(paths["vgd_json"], paths["instances"], paths["image_dir"], synthesize_missing=True)


_READERS: dict[Metric, Callable[[Benchmark, Mapping[str, Path]], list[Record]]] = {
    PANOPTIC: _read_panoptic,
    SEMANTIC: _read_semantic,
    INSTANCE: _read_instances,
    MASK_IOU: _read_mask_iou,
    GCG: _read_gcg,
    VGD: _read_vgd,
}


def _default_reader(benchmark: Benchmark) -> Callable[[Benchmark, Mapping[str, Path]], list[Record]]:
    return _READERS[benchmark.metric]
