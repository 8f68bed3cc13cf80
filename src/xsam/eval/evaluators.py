"""One evaluator per metric family: how a benchmark's predictions are scored and saved.

The benchmark's records are read by its reader (:mod:`xsam.eval.benchmarks`) and turned into prompts
and ground truth by its task (:meth:`~xsam.tasks.base.TaskHandler.evaluation_samples`, deterministic:
the first question and answer template of each list, all categories in id order, a fixed
visual-prompt kind, the evaluation thresholds of the task table). The evaluator of the benchmark's
:class:`~xsam.tasks.base.Metric` accumulates a metric object that :meth:`Evaluator.merge` combines
across processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.formats.coco import id_to_rgb
from ..data.formats.json_fields import load_json
from ..processing import encode_rle, png_bytes, write_atomically
from ..tasks.base import EvalSample, MaskTruth, Metric
from ..tasks.prediction import Prediction
from ..tasks.records import Record
from ..tasks.registry import task_handler
from .benchmarks import Benchmark
from .metrics.coco_ap import MaskAPMetric
from .metrics.gcg import GCGMetric
from .metrics.iou import MaskIoUMetric, SemanticMetric
from .metrics.panoptic import PanopticQualityMetric

IGNORE_LABEL = 255


class Evaluator:
    """Base class: subclasses set :attr:`metric` and implement the hooks.

    Args:
        benchmark: what is evaluated.
        paths: its resolved files (some families read their ground truth from them).
        samples: the prompts and their ground truth, from the benchmark's task.
    """

    metric: Any

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        if not samples:
            raise ValueError(
                f"{benchmark.name}: no samples found in {next(iter(paths.values()), 'its files')}"
            )
        self.benchmark = benchmark
        self.samples = list(samples)

    def request(self, sample: EvalSample) -> dict[str, Any]:
        """Keyword arguments of :meth:`~xsam.inference.XSamPredictor.predict` for ``sample``."""
        return dict(sample.request)

    def protocol(self) -> dict[str, Any]:
        """What the numbers depend on beyond the task's templates and thresholds (for the results)."""
        return {}

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
        return task_handler(self.benchmark.task).score_threshold


def _write_json(path: Path, value: Any) -> Path:
    return write_atomically(path, json.dumps(value))


def _write_png(path: Path, array: np.ndarray) -> None:
    write_atomically(path, png_bytes(Image.fromarray(array)))


def _category_table(record: Record) -> tuple[list[str], list[bool], list[Any]]:
    names = [name for name, _ in record.categories]
    is_thing = [thing for _, thing in record.categories]
    return names, is_thing, list(record.extra["category_ids"])


def _as_array(masks: Any) -> np.ndarray:
    return masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)


# ------------------------------------------------------------------------------- generic family
class _GenericEvaluator(Evaluator):
    """Shared by the panoptic, semantic and instance evaluators: one sample per image, every
    category of the dataset listed in id order; the truth is the record."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
        self.names, self.is_thing, self.category_ids = _category_table(self.samples[0].truth)


def _stem(sample: EvalSample) -> str:
    return Path(sample.image_path).stem


class PanopticEvaluator(_GenericEvaluator):
    """PQ on a COCO-panoptic-format split; saves COCO panoptic PNGs + JSON."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
        self.metric = PanopticQualityMetric(dict(zip(self.category_ids, self.is_thing, strict=True)))

    def _segments_info(self, prediction: Prediction) -> list[dict[str, Any]]:
        return [
            {"id": int(s["id"]), "category_id": self.category_ids[int(s["category_id"])], "score": s["score"]}
            for s in prediction.segments
        ]

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        record: Record = sample.truth
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

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
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
        self.metric.update(_as_array(prediction.segmentation), self.ground_truth(sample.truth))

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        file_name = f"{_stem(sample)}.png"
        _write_png(folder / "semantic" / file_name, _as_array(prediction.segmentation).astype(np.uint8))
        _write_png(folder / "semantic_gt" / file_name, self.ground_truth(sample.truth))
        return [{"image_id": sample.image_id, "file_name": file_name}]


class InstanceEvaluator(_GenericEvaluator):
    """Mask AP with pycocotools against the split's instances JSON; saves COCO results."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
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
class MaskIoUEvaluator(Evaluator):
    """cIoU / gIoU of one mask per sample (referring, reasoning, interactive): the truth is a
    :class:`~xsam.tasks.base.MaskTruth`, its ``ignore`` pixels left out of both masks."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
        self.metric = MaskIoUMetric()

    def _mask(self, prediction: Prediction) -> np.ndarray:
        masks = _as_array(prediction.masks)
        return masks[0] if len(masks) else np.zeros(prediction.image_size, dtype=bool)

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        truth: MaskTruth = sample.truth
        ignore = None if truth.ignore is None else truth.ignore.decode()
        self.metric.update(self._mask(prediction), truth.target(), ignore)

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        truth: MaskTruth = sample.truth
        ground_truth = {
            "id": sample.key,
            "image_id": sample.image_id,
            "segmentation": encode_rle(truth.target()),
        }
        if truth.ignore is not None:
            ground_truth["ignore"] = encode_rle(truth.ignore.decode())
        predicted = {
            "id": sample.key,
            "image_id": sample.image_id,
            "segmentation": encode_rle(self._mask(prediction)),
        }
        if truth.text is not None:
            predicted["text"] = truth.text
        return [{"prediction": predicted, "ground_truth": ground_truth}]

    def write_predictions(self, entries: list[dict[str, Any]], folder: Path) -> Path:
        _write_json(folder / "ground_truth.json", [entry["ground_truth"] for entry in entries])
        return _write_json(folder / "predictions.json", [entry["prediction"] for entry in entries])


# ------------------------------------------------------------------------------------ GCG and VGD
class GCGEvaluator(Evaluator):
    """Grounded captions by generation; METEOR, CIDEr, AP50 and mIoU against the GranD-f GT files."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
        self.metric = GCGMetric(load_json(paths["mask_gt"]), load_json(paths["caption_gt"]))

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        self.metric.update(sample.image_id, prediction.text or "", _as_array(prediction.masks))

    def save(self, sample: EvalSample, prediction: Prediction, folder: Path) -> list[dict[str, Any]]:
        masks = [encode_rle(mask) for mask in _as_array(prediction.masks)]
        entry = {"image_id": sample.image_id, "caption": prediction.text or "", "masks": masks}
        return [dict(entry, phrases=list(prediction.phrases), raw_text=prediction.raw_text)]


class VGDEvaluator(Evaluator):
    """Visual grounded segmentation: mask AP against the COCO instances JSON, restricted to the
    categories each image was prompted for (the truth is a
    :class:`~xsam.tasks.visual_grounding.VGDTruth`)."""

    def __init__(
        self, benchmark: Benchmark, paths: Mapping[str, Path], samples: Sequence[EvalSample]
    ) -> None:
        super().__init__(benchmark, paths, samples)
        self.synthesized = not Path(paths["vgd_json"]).is_file()
        self.ground_truth = _prompted_ground_truth(load_json(paths["instances"]), self.samples)
        self.metric = MaskAPMetric(self.ground_truth)

    def protocol(self) -> dict[str, Any]:
        return {"visual_prompts": "synthesised from instances" if self.synthesized else "from file"}

    def _category_ids(self, sample: EvalSample, prediction: Prediction) -> list[Any]:
        # labels are "region <i>": the i-th prompted category
        ids = sample.truth.category_ids
        return [ids[int(label.rsplit(" ", 1)[1])] for label in prediction.labels]

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
    prompted = {
        (sample.image_id, category_id) for sample in samples for category_id in sample.truth.category_ids
    }
    annotations = [
        annotation
        for annotation in instances.get("annotations", [])
        if (annotation.get("image_id"), annotation.get("category_id")) in prompted
    ]
    return dict(instances, annotations=annotations)


EVALUATORS: dict[Metric, type[Evaluator]] = {
    Metric.PANOPTIC: PanopticEvaluator,
    Metric.SEMANTIC: SemanticEvaluator,
    Metric.INSTANCE: InstanceEvaluator,
    Metric.MASK_IOU: MaskIoUEvaluator,
    Metric.GCG: GCGEvaluator,
    Metric.VGD: VGDEvaluator,
}
"""Metric family -> its evaluator."""


def build_evaluator(
    benchmark: Benchmark, paths: Mapping[str, Path], *, max_new_tokens: int = 512
) -> Evaluator:
    """Read ``benchmark``'s records from ``paths``, let its task turn them into samples, and return the
    evaluator of its metric family. Generating tasks get ``max_new_tokens`` in their requests."""
    records = benchmark.read(paths)
    handler = task_handler(benchmark.task)
    samples = handler.evaluation_samples(records, benchmark.metric, dict(benchmark.options))
    if handler.generates:
        for sample in samples:
            sample.request["max_new_tokens"] = max_new_tokens
    return EVALUATORS[benchmark.metric](benchmark, paths, samples)
