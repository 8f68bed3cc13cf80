"""One evaluator per metric family: which samples a benchmark has, how each is prompted, and how its
prediction is scored and saved.

Every evaluator reads its benchmark with the dataset readers of :mod:`xsam.data.formats`, prompts
deterministically (the first question and answer template of each list; all categories in id order;
a fixed visual-prompt kind) with the evaluation thresholds of :data:`~xsam.tasks.task.TASKS`, and
accumulates a metric object that :meth:`Evaluator.merge` combines across processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.formats.coco import id_to_rgb, read_coco_instances, read_coco_panoptic, read_semantic_pngs
from ..data.formats.gcg import read_gcg_eval
from ..data.formats.json_fields import load_json
from ..data.formats.reasonseg import read_reasonseg, split_queries
from ..data.formats.refer import read_refer
from ..data.formats.visual_prompts import read_coco_interactive, read_coco_vgd
from ..data.records import Mask, Record, Segment, encode_rle, union_masks
from ..inference.prediction import Prediction
from ..tasks import Task
from ..tasks.generic import CategorySpec, SegmentationKind
from .benchmarks import GCG, INSTANCE, MASK_IOU, PANOPTIC, SEMANTIC, VGD, Benchmark
from .metrics.coco_ap import MaskAPMetric
from .metrics.gcg import GCGMetric
from .metrics.iou import MaskIoUMetric, SemanticMetric
from .metrics.panoptic import PanopticQualityMetric

IGNORE_LABEL = 255


@dataclass
class EvalSample:
    """One prompt of a benchmark.

    Attributes:
        key: unique within the benchmark (names saved predictions).
        image_path: the image the prompt is about (consecutive samples often share it).
        image_id: the dataset's image id.
        payload: what the evaluator needs to prompt and score it (a record, an expression, ...).
    """

    key: str
    image_path: Path
    image_id: Any
    payload: Any


class Evaluator:
    """Base class: subclasses fill :attr:`samples` and :attr:`metric` and implement the hooks."""

    samples: list[EvalSample]
    metric: Any

    def __init__(self, benchmark: Benchmark) -> None:
        self.benchmark = benchmark

    def request(self, sample: EvalSample) -> dict[str, Any]:
        """Keyword arguments of :meth:`~xsam.inference.XSamPredictor.predict` for ``sample``."""
        raise NotImplementedError

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        """Score one prediction into :attr:`metric`."""
        raise NotImplementedError

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        """JSON entries of the saved predictions (writing any image files under ``folder``)."""
        raise NotImplementedError

    def write_predictions(self, entries: list[dict[str, Any]], folder: Path) -> Path:
        """Write the gathered entries as ``folder/predictions.json`` (the format ``xsam score`` reads)."""
        return _write_json(folder / "predictions.json", entries)

    def merge(self, metric: Any) -> None:
        self.metric.merge(metric)

    def compute(self) -> dict[str, float]:
        return self.metric.compute()

    @property
    def threshold(self) -> float | None:
        return self.benchmark.task.spec.score_threshold


def write_text_atomically(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path


def _write_json(path: Path, value: Any) -> Path:
    return write_text_atomically(path, json.dumps(value))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _require_records(records: list[Record], benchmark: Benchmark, where: Any) -> list[Record]:
    if not records:
        raise ValueError(f"{benchmark.name}: no samples found in {where}")
    return records


def _category_table(record: Record) -> tuple[list[str], list[bool], list[Any]]:
    names = [name for name, _ in record.categories]
    is_thing = [thing for _, thing in record.categories]
    return names, is_thing, list(record.extra["category_ids"])


def _as_array(masks: Any) -> np.ndarray:
    return masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)


# ------------------------------------------------------------------------------- generic family
class _GenericEvaluator(Evaluator):
    """Shared by the panoptic, semantic and instance evaluators: one sample per image, every
    category of the dataset listed in id order."""

    kind: SegmentationKind

    def _set_records(self, records: list[Record], where: Any) -> None:
        records = _require_records(records, self.benchmark, where)
        self.names, self.is_thing, self.category_ids = _category_table(records[0])
        self.categories = CategorySpec(tuple(self.names), tuple(self.is_thing), self.kind)
        self.samples = [
            EvalSample(str(record.image_id), record.image_path, record.image_id, record) for record in records
        ]

    def request(self, sample: EvalSample) -> dict[str, Any]:
        request = {"task": self.benchmark.task, "categories": self.categories, "threshold": self.threshold}
        if self.benchmark.options.get("closed_set"):
            request["closed_set"] = True
        return request


def _stem(sample: EvalSample) -> str:
    return Path(sample.image_path).stem


class PanopticEvaluator(_GenericEvaluator):
    """PQ on a COCO-panoptic-format split; saves COCO panoptic PNGs + JSON."""

    kind = SegmentationKind.PANOPTIC

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path]) -> None:
        super().__init__(benchmark)
        task = benchmark.task.value
        records = read_coco_panoptic(paths["annotations"], paths["png_dir"], paths["image_dir"], task=task)
        self._set_records(records, paths["annotations"])
        self.metric = PanopticQualityMetric(dict(zip(self.category_ids, self.is_thing, strict=True)))

    def _segments_info(self, prediction: Prediction) -> list[dict[str, Any]]:
        return [
            {"id": int(s["id"]), "category_id": self.category_ids[int(s["category_id"])], "score": s["score"]}
            for s in prediction.segments
        ]

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        record: Record = sample.payload
        truth = np.zeros((record.height, record.width), dtype=np.int64)
        truth_segments = []
        for index, segment in enumerate(record.segments, start=1):
            truth[segment.mask.decode()] = index
            truth_segments.append(
                {"id": index, "category_id": segment.category_id, "iscrowd": int(segment.iscrowd)}
            )
        self.metric.update(
            _as_array(prediction.segmentation).astype(np.int64),
            self._segments_info(prediction),
            truth,
            truth_segments,
        )

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        file_name = f"{_stem(sample)}.png"
        _write_png(folder / "panoptic" / file_name, id_to_rgb(_as_array(prediction.segmentation)))
        return [
            {
                "image_id": sample.image_id,
                "file_name": file_name,
                "segments_info": self._segments_info(prediction),
            }
        ]

    def write_predictions(self, entries: list[dict[str, Any]], folder: Path) -> Path:
        categories = [
            {"id": category_id, "name": name, "isthing": int(thing)}
            for category_id, name, thing in zip(self.category_ids, self.names, self.is_thing, strict=True)
        ]
        return _write_json(folder / "predictions.json", {"annotations": entries, "categories": categories})


class SemanticEvaluator(_GenericEvaluator):
    """mIoU / fwIoU / mACC / pACC; ground truth from label PNGs, or painted from panoptic PNGs.

    With a ``png_dir`` path the split is COCO panoptic and its semantic ground truth is each segment
    painted with its class index (crowd segments included, void -> 255), as Mask2Former's
    ``panoptic_semseg`` converter writes it; with a ``label_dir`` the label PNGs are read directly and
    the class list comes from the ``annotations`` panoptic JSON (ADE20K-150).
    """

    kind = SegmentationKind.SEMANTIC

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path]) -> None:
        super().__init__(benchmark)
        task = benchmark.task.value
        if "png_dir" in paths:
            records = read_coco_panoptic(
                paths["annotations"], paths["png_dir"], paths["image_dir"], task=task
            )
        else:
            classes = _panoptic_classes(paths["annotations"])
            records = read_semantic_pngs(paths["image_dir"], paths["label_dir"], classes, task=task)
            for record in records:
                record.extra["category_ids"] = list(range(len(classes)))
        self._set_records(records, paths.get("png_dir", paths.get("label_dir")))
        self.index = {name: i for i, name in enumerate(self.names)}
        self.metric = SemanticMetric(len(self.names), ignore_index=IGNORE_LABEL)

    def ground_truth(self, record: Record) -> np.ndarray:
        """``(H, W)`` uint8 class indices, 255 where ignored or unlabelled."""
        truth = np.full((record.height, record.width), IGNORE_LABEL, dtype=np.uint8)
        for segment in record.segments:
            truth[segment.mask.decode()] = self.index[segment.category]
        if record.ignore_mask is not None:
            truth[record.ignore_mask.decode()] = IGNORE_LABEL
        return truth

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        self.metric.update(_as_array(prediction.segmentation), self.ground_truth(sample.payload))

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        file_name = f"{_stem(sample)}.png"
        _write_png(folder / "semantic" / file_name, _as_array(prediction.segmentation).astype(np.uint8))
        _write_png(folder / "semantic_gt" / file_name, self.ground_truth(sample.payload))
        return [{"image_id": sample.image_id, "file_name": file_name}]


def _panoptic_classes(path: Path) -> list[tuple[str, bool]]:
    """``(name, is_thing)`` in id order from a COCO-panoptic-style JSON's ``categories``."""
    data = load_json(path)
    categories = data.get("categories") if isinstance(data, Mapping) else None
    if not categories:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'categories' list")
    ordered = sorted(categories, key=lambda category: category["id"])
    return [(str(category["name"]), bool(category.get("isthing", 0))) for category in ordered]


class InstanceEvaluator(_GenericEvaluator):
    """Mask AP with pycocotools against the split's instances JSON; saves COCO results."""

    kind = SegmentationKind.INSTANCE

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path]) -> None:
        super().__init__(benchmark)
        records = read_coco_instances(paths["annotations"], paths["image_dir"], task=benchmark.task.value)
        self._set_records(records, paths["annotations"])
        self.id_by_name = dict(zip(self.names, self.category_ids, strict=True))
        self.metric = MaskAPMetric.from_json(paths["annotations"])

    def _category_ids(self, prediction: Prediction) -> list[Any]:
        return [self.id_by_name[label] for label in prediction.labels]

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        masks = _as_array(prediction.masks)
        self.metric.add(sample.image_id, masks, prediction.scores, self._category_ids(prediction))

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        return _coco_results(sample.image_id, prediction, self._category_ids(prediction))


def _coco_results(image_id: Any, prediction: Prediction, category_ids: list[Any]) -> list[dict[str, Any]]:
    masks = _as_array(prediction.masks)
    return [
        {"image_id": image_id, "category_id": category_id, "segmentation": encode_rle(mask), "score": score}
        for mask, score, category_id in zip(masks, prediction.scores, category_ids, strict=True)
    ]


# -------------------------------------------------------------------------------- mask IoU family
@dataclass
class _Target:
    """A single-mask sample: what to ask and the ground truth (lazy masks, unioned)."""

    masks: list[Mask]
    ignore: Mask | None = None
    text: str | None = None
    is_sentence: bool | None = None
    prompt: np.ndarray | None = None

    def truth(self, height: int, width: int) -> np.ndarray:
        return union_masks(self.masks, height, width)


class MaskIoUEvaluator(Evaluator):
    """cIoU / gIoU of one mask per sample: referring (one sample per sentence), reasoning (one per
    query; "ignore" polygons excluded) and interactive (one per prompted instance)."""

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path]) -> None:
        super().__init__(benchmark)
        self.metric = MaskIoUMetric()
        task = benchmark.task
        if task is Task.REFERRING:
            self.samples = self._referring(paths)
        elif task is Task.REASONING:
            self.samples = self._reasoning(paths)
        else:
            self.samples = self._interactive(paths)
        if not self.samples:
            raise ValueError(f"{benchmark.name}: no samples found in {next(iter(paths.values()))}")

    def _referring(self, paths: Mapping[str, Path]) -> list[EvalSample]:
        records = read_refer(
            paths["dataset_dir"],
            dataset=self.benchmark.options["dataset"],
            split=self.benchmark.options["split"],
            image_dir=paths["image_dir"],
            group_by_image=False,
        )
        samples = []
        for index, record in enumerate(records):
            expression = record.expressions[0]
            target = _Target(expression.masks, text=expression.text)
            samples.append(EvalSample(str(index), record.image_path, record.image_id, (record, target)))
        return samples

    def _reasoning(self, paths: Mapping[str, Path]) -> list[EvalSample]:
        records = split_queries(
            read_reasonseg(paths["split_dir"], query_type=self.benchmark.options["query_type"])
        )
        samples = []
        for record in records:
            expression = record.expressions[0]
            target = _Target(expression.masks, record.ignore_mask, expression.text, expression.is_sentence)
            key = f"{Path(record.image_path).stem}_{record.extra['query_index']}"
            samples.append(EvalSample(key, record.image_path, record.image_id, (record, target)))
        return samples

    def _interactive(self, paths: Mapping[str, Path]) -> list[EvalSample]:
        kind = self.benchmark.options["prompt_kind"]
        samples = []
        for record in read_coco_interactive(paths["json"], paths["image_dir"]):
            for index, segment in enumerate(record.segments):
                prompt = _prompt(segment, kind)
                if prompt is None:
                    continue
                target = _Target([segment.mask], prompt=prompt)
                key = f"{record.image_id}_{index}"
                samples.append(EvalSample(key, record.image_path, record.image_id, (record, target)))
        return samples

    def request(self, sample: EvalSample) -> dict[str, Any]:
        _, target = sample.payload
        task = self.benchmark.task
        if task is Task.INTERACTIVE:
            return {"task": task, "masks": target.prompt[None], "threshold": self.threshold}
        request = {"task": task, "text": target.text}
        if task is Task.REASONING:
            request["is_sentence"] = target.is_sentence
        return request

    def _mask(self, prediction: Prediction) -> np.ndarray:
        masks = _as_array(prediction.masks)
        return masks[0] if len(masks) else np.zeros(prediction.image_size, dtype=bool)

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        record, target = sample.payload
        ignore = None if target.ignore is None else target.ignore.decode()
        self.metric.update(self._mask(prediction), target.truth(record.height, record.width), ignore)

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        record, target = sample.payload
        truth = {
            "id": sample.key,
            "image_id": sample.image_id,
            "segmentation": encode_rle(target.truth(record.height, record.width)),
        }
        if target.ignore is not None:
            truth["ignore"] = encode_rle(target.ignore.decode())
        predicted = {
            "id": sample.key,
            "image_id": sample.image_id,
            "segmentation": encode_rle(self._mask(prediction)),
        }
        if target.text is not None:
            predicted["text"] = target.text
        return [{"prediction": predicted, "ground_truth": truth}]

    def write_predictions(self, entries: list[dict[str, Any]], folder: Path) -> Path:
        _write_json(folder / "ground_truth.json", [entry["ground_truth"] for entry in entries])
        return _write_json(folder / "predictions.json", [entry["prediction"] for entry in entries])


def _prompt(segment: Segment, kind: str) -> np.ndarray | None:
    """The decoded visual prompt of one kind, or None when the segment has none or it is empty."""
    if segment.iscrowd or kind not in segment.visual_prompts:
        return None
    prompt = segment.visual_prompts[kind].decode()
    return prompt if prompt.any() else None


# ------------------------------------------------------------------------------------ GCG and VGD
class GCGEvaluator(Evaluator):
    """Grounded captions by generation; METEOR, CIDEr, AP50 and mIoU against the GranD-f GT files."""

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path], *, max_new_tokens: int = 512) -> None:
        super().__init__(benchmark)
        records = read_gcg_eval(paths["mask_gt"], paths["caption_gt"], paths["image_dir"])
        records = _require_records(records, benchmark, paths["mask_gt"])
        self.samples = [EvalSample(str(r.image_id), r.image_path, r.image_id, r) for r in records]
        self.metric = GCGMetric(load_json(paths["mask_gt"]), load_json(paths["caption_gt"]))
        self.max_new_tokens = max_new_tokens

    def request(self, sample: EvalSample) -> dict[str, Any]:
        return {"task": self.benchmark.task, "max_new_tokens": self.max_new_tokens}

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        self.metric.update(sample.image_id, prediction.text or "", _as_array(prediction.masks))

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        masks = [encode_rle(mask) for mask in _as_array(prediction.masks)]
        entry = {"image_id": sample.image_id, "caption": prediction.text or "", "masks": masks}
        return [dict(entry, phrases=list(prediction.phrases), raw_text=prediction.raw_text)]


class VGDEvaluator(Evaluator):
    """Visual grounded segmentation: each category of an image prompted by one of its instances (the
    first with a non-empty prompt of the benchmark's kind, in id order); mask AP against the COCO
    instances JSON."""

    def __init__(self, benchmark: Benchmark, paths: Mapping[str, Path]) -> None:
        super().__init__(benchmark)
        vgd_json = paths["vgd_json"]
        self.synthesized = not Path(vgd_json).is_file()
        records = read_coco_vgd(vgd_json, paths["instances"], paths["image_dir"], synthesize_missing=True)
        kind = benchmark.options["prompt_kind"]
        self.samples = []
        for record in records:
            prompts = _category_prompts(record, kind)
            if prompts:
                payload = (record, prompts)
                self.samples.append(
                    EvalSample(str(record.image_id), record.image_path, record.image_id, payload)
                )
        if not self.samples:
            raise ValueError(f"{benchmark.name}: no image with a non-empty {kind} prompt in {vgd_json}")
        self.ground_truth = _prompted_ground_truth(load_json(paths["instances"]), self.samples)
        self.metric = MaskAPMetric(self.ground_truth)

    def request(self, sample: EvalSample) -> dict[str, Any]:
        masks = np.stack([prompt for _, prompt in sample.payload[1]])
        return {"task": self.benchmark.task, "masks": masks, "threshold": self.threshold}

    def _category_ids(self, sample: EvalSample, prediction: Prediction) -> list[Any]:
        # labels are "region <i>": the i-th prompted category
        prompts = sample.payload[1]
        return [prompts[int(label.rsplit(" ", 1)[1])][0] for label in prediction.labels]

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        ids = self._category_ids(sample, prediction)
        self.metric.add(sample.image_id, _as_array(prediction.masks), prediction.scores, ids)

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        return _coco_results(sample.image_id, prediction, self._category_ids(sample, prediction))

    def write_predictions(self, entries: list[dict[str, Any]], folder: Path) -> Path:
        _write_json(folder / "ground_truth.json", self.ground_truth)
        return super().write_predictions(entries, folder)


def _prompted_ground_truth(instances: Mapping[str, Any], samples: list[EvalSample]) -> dict[str, Any]:
    """The instances JSON with each image's annotations restricted to its prompted categories (an
    instance of a category with no usable prompt cannot be asked for, so it is not a miss)."""
    prompted = {(sample.image_id, category_id) for sample in samples for category_id, _ in sample.payload[1]}
    annotations = [
        annotation
        for annotation in instances.get("annotations", [])
        if (annotation.get("image_id"), annotation.get("category_id")) in prompted
    ]
    return dict(instances, annotations=annotations)


def _category_prompts(record: Record, kind: str) -> list[tuple[Any, np.ndarray]]:
    """``(category_id, prompt)`` per category of the image in id order, prompted by its first instance
    with a non-empty prompt of ``kind``."""
    chosen: dict[Any, np.ndarray] = {}
    for segment in record.segments:
        if segment.category_id not in chosen and (prompt := _prompt(segment, kind)) is not None:
            chosen[segment.category_id] = prompt
    return [(category_id, chosen[category_id]) for category_id in sorted(chosen)]


def build_evaluator(
    benchmark: Benchmark, paths: Mapping[str, Path], *, max_new_tokens: int = 512
) -> Evaluator:
    """The evaluator of ``benchmark``'s metric family, with its samples read from ``paths``."""
    if benchmark.family == GCG:
        return GCGEvaluator(benchmark, paths, max_new_tokens=max_new_tokens)
    family = {
        PANOPTIC: PanopticEvaluator,
        SEMANTIC: SemanticEvaluator,
        INSTANCE: InstanceEvaluator,
        MASK_IOU: MaskIoUEvaluator,
        VGD: VGDEvaluator,
    }[benchmark.family]
    return family(benchmark, paths)
