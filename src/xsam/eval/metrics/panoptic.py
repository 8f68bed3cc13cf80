"""Panoptic quality (PQ, SQ, RQ) with the semantics of panopticapi's ``pq_compute``, and file-level
scoring of panoptic and semantic predictions.

Conventions (panopticapi's, which the official X-SAM evaluation uses):

* Segment-id maps are ``(H, W)`` integer arrays; id 0 is VOID (unlabelled). GT VOID pixels are ignored:
  a predicted segment's pixels on GT VOID leave the IoU denominator.
* A GT segment and a predicted segment of the same category match when their IoU is strictly above
  0.5 (which makes matches unique). Crowd GT segments are never matched.
* Every stuff segment is its own segment: unlike torchmetrics' ``PanopticQuality``, two predicted
  segments of one stuff class are *not* merged before matching.
* PQ, SQ and RQ are computed per category and averaged without weights over the categories that have
  at least one TP, FP or FN. Results are fractions in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xsam.data.formats.coco import rgb_to_id
from xsam.data.formats.json_fields import load_json
from xsam.eval.metrics.iou import SemanticMetric

PathLike = str | os.PathLike
VOID = 0
MATCH_IOU = 0.5  # a pair matches when IoU > MATCH_IOU (strictly)
IGNORE_FRACTION = 0.5  # an unmatched prediction is ignored when more than this fraction is VOID/crowd
_MAX_LISTED = 20  # ids or names quoted in one error message


@dataclass(frozen=True)
class _Overlaps:
    """Pixel counts of one image pair, VOID included: per ``(gt id, predicted id)`` pair and per id."""

    pairs: dict[tuple[int, int], int]
    ground_truth_area: dict[int, int]
    predicted_area: dict[int, int]

    @classmethod
    def of(cls, ground_truth: np.ndarray, prediction: np.ndarray) -> _Overlaps:
        # Index both maps by their own unique ids, so any id range works without overflow.
        gt_ids, gt_index = np.unique(ground_truth.ravel(), return_inverse=True)
        pred_ids, pred_index = np.unique(prediction.ravel(), return_inverse=True)
        joint = gt_index.astype(np.int64) * len(pred_ids) + pred_index
        keys, counts = np.unique(joint, return_counts=True)
        pairs: dict[tuple[int, int], int] = {}
        ground_truth_area: dict[int, int] = {}
        predicted_area: dict[int, int] = {}
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            gt_id, pred_id = int(gt_ids[key // len(pred_ids)]), int(pred_ids[key % len(pred_ids)])
            pairs[gt_id, pred_id] = count
            ground_truth_area[gt_id] = ground_truth_area.get(gt_id, 0) + count
            predicted_area[pred_id] = predicted_area.get(pred_id, 0) + count
        return cls(pairs, ground_truth_area, predicted_area)


@dataclass
class PanopticQualityMetric:
    """PQ/SQ/RQ with panopticapi's semantics (COCO panoptic ``pq_compute``).

    ``categories`` maps every evaluated category id to whether it is a thing. Per-category sums (IoU of
    the true positives, TP, FP, FN counts) accumulate over :meth:`update` calls and across processes
    through :meth:`merge`; :meth:`compute` and :meth:`per_category` read them.
    """

    categories: Mapping[int, bool]
    _row: dict[int, int] = field(init=False, repr=False)
    _iou_sum: np.ndarray = field(init=False, repr=False)  # (C,) float64, rows in ascending id order
    _true_positives: np.ndarray = field(init=False, repr=False)  # (C,) int64
    _false_positives: np.ndarray = field(init=False, repr=False)  # (C,) int64
    _false_negatives: np.ndarray = field(init=False, repr=False)  # (C,) int64

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError("PanopticQualityMetric needs at least one category")
        self.categories = {int(category): bool(is_thing) for category, is_thing in self.categories.items()}
        self._row = {category: row for row, category in enumerate(sorted(self.categories))}
        size = len(self._row)
        self._iou_sum = np.zeros(size, dtype=np.float64)
        self._true_positives = np.zeros(size, dtype=np.int64)
        self._false_positives = np.zeros(size, dtype=np.int64)
        self._false_negatives = np.zeros(size, dtype=np.int64)

    def update(
        self,
        prediction: np.ndarray,
        prediction_segments: Sequence[Mapping[str, Any]],
        ground_truth: np.ndarray,
        ground_truth_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add one image.

        ``prediction`` and ``ground_truth`` are ``(H, W)`` integer segment-id maps (0 = VOID).
        ``prediction_segments`` lists ``{"id", "category_id"}`` for every non-VOID id of the predicted
        map (a listed id absent from the map is an empty segment and is ignored); ``ground_truth_segments``
        lists ``{"id", "category_id", "iscrowd" (optional, default 0)}``. As in panopticapi, GT ids in
        the map but not listed are neither matched nor treated as VOID.
        """
        prediction, ground_truth = _id_map(prediction, "prediction"), _id_map(ground_truth, "ground truth")
        if prediction.shape != ground_truth.shape:
            raise ValueError(
                f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in shape"
            )
        predicted = self._prediction_table(prediction_segments)
        truth = self._ground_truth_table(ground_truth_segments)
        overlaps = _Overlaps.of(ground_truth, prediction)
        unlisted = sorted(set(overlaps.predicted_area) - set(predicted) - {VOID})
        if unlisted:
            raise ValueError(f"predicted segment ids {_quote(unlisted)} are in the map but not listed")
        matches = self._match(overlaps, truth, predicted)
        self._count_false_negatives(truth, {gt_id for gt_id, _ in matches})
        self._count_false_positives(overlaps, truth, predicted, {pred_id for _, pred_id in matches})

    def merge(self, other: PanopticQualityMetric) -> None:
        """Add ``other``'s accumulated sums (e.g. another process's) to this metric's."""
        if dict(other.categories) != dict(self.categories):
            raise ValueError("cannot merge panoptic metrics over different categories")
        self._iou_sum += other._iou_sum
        self._true_positives += other._true_positives
        self._false_positives += other._false_positives
        self._false_negatives += other._false_negatives

    def compute(self) -> dict[str, float]:
        """``pq``, ``sq``, ``rq`` and the count ``n`` of averaged categories, overall and with the
        suffixes ``_th`` (things) and ``_st`` (stuff). A group with no category to average gives 0.0."""
        quality, evaluated = self._qualities(), self._evaluated()
        is_thing = np.array([self.categories[category] for category in self._row], dtype=bool)
        result: dict[str, float] = {}
        for suffix, group in (("", np.ones_like(is_thing)), ("_th", is_thing), ("_st", ~is_thing)):
            chosen = evaluated & group
            for name, values in quality.items():
                result[name + suffix] = float(values[chosen].mean()) if chosen.any() else 0.0
            result["n" + suffix] = int(chosen.sum())
        return result

    def per_category(self) -> dict[int, dict[str, float]]:
        """``{category_id: {"pq", "sq", "rq"}}`` for the categories with at least one TP, FP or FN."""
        quality, evaluated = self._qualities(), self._evaluated()
        return {
            category: {name: float(values[row]) for name, values in quality.items()}
            for category, row in self._row.items()
            if evaluated[row]
        }

    def _qualities(self) -> dict[str, np.ndarray]:
        """Per-category ``(C,)`` float64 PQ, SQ and RQ; 0 where a category has no true positive."""
        true_positives = self._true_positives.astype(np.float64)
        denominator = true_positives + 0.5 * self._false_positives + 0.5 * self._false_negatives
        zeros = np.zeros_like(denominator)
        return {
            "pq": np.divide(self._iou_sum, denominator, out=zeros.copy(), where=denominator > 0),
            "sq": np.divide(self._iou_sum, true_positives, out=zeros.copy(), where=true_positives > 0),
            "rq": np.divide(true_positives, denominator, out=zeros.copy(), where=denominator > 0),
        }

    def _evaluated(self) -> np.ndarray:
        """``(C,)`` bool: categories that saw any TP, FP or FN (the others are left out of the means)."""
        return (self._true_positives + self._false_positives + self._false_negatives) > 0

    def _prediction_table(self, segments: Sequence[Mapping[str, Any]]) -> dict[int, int]:
        """Predicted segment id -> category id, checked against the known categories."""
        table: dict[int, int] = {}
        for segment in segments:
            segment_id, category = _segment_key(segment, table, "predicted")
            if category not in self._row:
                raise ValueError(f"predicted segment {segment_id} has unknown category_id {category}")
            table[segment_id] = category
        return table

    def _ground_truth_table(self, segments: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, bool]]:
        """GT segment id -> (category id, is crowd), in the listed order (crowd handling depends on it)."""
        table: dict[int, tuple[int, bool]] = {}
        for segment in segments:
            segment_id, category = _segment_key(segment, table, "ground-truth")
            if category not in self._row:
                raise ValueError(f"ground-truth segment {segment_id} has unknown category_id {category}")
            table[segment_id] = (category, bool(segment.get("iscrowd", 0)))
        return table

    def _match(
        self, overlaps: _Overlaps, truth: Mapping[int, tuple[int, bool]], predicted: Mapping[int, int]
    ) -> set[tuple[int, int]]:
        """Record the true positives of one image; returns the matched ``(gt id, predicted id)`` pairs."""
        matches: set[tuple[int, int]] = set()
        for (gt_id, pred_id), intersection in overlaps.pairs.items():
            if gt_id not in truth or pred_id not in predicted:
                continue  # VOID on either side, or an unlisted GT id
            category, is_crowd = truth[gt_id]
            if is_crowd or category != predicted[pred_id]:
                continue
            # The predicted segment's pixels on GT VOID are not held against it.
            union = (
                overlaps.ground_truth_area[gt_id]
                + overlaps.predicted_area[pred_id]
                - intersection
                - overlaps.pairs.get((VOID, pred_id), 0)
            )
            iou = intersection / union
            if iou > MATCH_IOU:
                row = self._row[category]
                self._iou_sum[row] += iou
                self._true_positives[row] += 1
                matches.add((gt_id, pred_id))
        return matches

    def _count_false_negatives(self, truth: Mapping[int, tuple[int, bool]], matched: set[int]) -> None:
        for gt_id, (category, is_crowd) in truth.items():
            if not is_crowd and gt_id not in matched:
                self._false_negatives[self._row[category]] += 1

    def _count_false_positives(
        self,
        overlaps: _Overlaps,
        truth: Mapping[int, tuple[int, bool]],
        predicted: Mapping[int, int],
        matched: set[int],
    ) -> None:
        # panopticapi keeps one crowd region per category: the last one listed. Matching it keeps our
        # numbers identical to the official ones when an image lists several crowds of one category.
        crowd_of = {category: gt_id for gt_id, (category, is_crowd) in truth.items() if is_crowd}
        for pred_id, category in predicted.items():
            area = overlaps.predicted_area.get(pred_id, 0)
            if pred_id in matched or area == 0:
                continue
            ignored = overlaps.pairs.get((VOID, pred_id), 0)
            if category in crowd_of:
                ignored += overlaps.pairs.get((crowd_of[category], pred_id), 0)
            if ignored > IGNORE_FRACTION * area:
                continue  # mostly on unlabelled or crowd ground truth: neither right nor wrong
            self._false_positives[self._row[category]] += 1


def score_panoptic_files(
    gt_json: PathLike, gt_dir: PathLike, pred_json: PathLike, pred_dir: PathLike
) -> dict[str, float]:
    """Score predictions in the COCO panoptic format (the one panopticapi's ``pq_compute`` takes).

    Each JSON holds ``annotations`` ``[{"image_id", "file_name", "segments_info": [{"id",
    "category_id", "iscrowd"?}]}]`` whose ``file_name`` is an RGB PNG in the matching directory
    (ids encoded as ``R + 256·G + 256²·B``); categories (``{"id", "isthing"}``) come from the GT JSON.
    Annotations are matched by ``image_id``; both files must cover exactly the same images.
    Returns :meth:`PanopticQualityMetric.compute`.
    """
    return panoptic_metric_from_files(gt_json, gt_dir, pred_json, pred_dir).compute()


def panoptic_metric_from_files(
    gt_json: PathLike, gt_dir: PathLike, pred_json: PathLike, pred_dir: PathLike
) -> PanopticQualityMetric:
    """The filled metric behind :func:`score_panoptic_files`, for callers that want per-category results."""
    gt_data, pred_data = _load_json(Path(gt_json)), _load_json(Path(pred_json))
    metric = PanopticQualityMetric(_panoptic_categories(gt_data, Path(gt_json)))
    gt_annotations = _annotations_by_image(gt_data, Path(gt_json))
    pred_annotations = _annotations_by_image(pred_data, Path(pred_json))
    _check_same_images(gt_annotations, pred_annotations)
    for image_id, gt_annotation in gt_annotations.items():
        pred_annotation = pred_annotations[image_id]
        try:
            metric.update(
                _read_panoptic_png(Path(pred_dir) / pred_annotation["file_name"]),
                pred_annotation["segments_info"],
                _read_panoptic_png(Path(gt_dir) / gt_annotation["file_name"]),
                gt_annotation["segments_info"],
            )
        except ValueError as error:
            raise ValueError(f"image_id {image_id!r}: {error}") from error
    return metric


def score_semantic_files(
    gt_dir: PathLike, pred_dir: PathLike, *, num_classes: int | None = None, ignore_index: int = 255
) -> dict[str, float]:
    """Score single-channel label PNGs (pixel = class index) matched by file name.

    Every ``*.png`` in ``gt_dir`` needs a file of the same name in ``pred_dir``; extra predictions are
    not read. ``num_classes`` defaults to 1 + the largest label seen in either set (``ignore_index``
    excluded). Returns :meth:`~xsam.eval.metrics.iou.SemanticMetric.compute`.
    """
    pairs = _semantic_pairs(Path(gt_dir), Path(pred_dir))
    if num_classes is None:
        num_classes = _count_classes(pairs, ignore_index)
    metric = SemanticMetric(num_classes=num_classes, ignore_index=ignore_index)
    for gt_path, pred_path in pairs:
        try:
            metric.update(_read_label_png(pred_path), _read_label_png(gt_path))
        except ValueError as error:
            raise ValueError(f"{gt_path.name}: {error}") from error
    return metric.compute()


def _id_map(ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be an (H, W) integer id map, got {ids.dtype} of shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what} holds negative segment ids")
    return ids


def _segment_key(segment: Mapping[str, Any], seen: Mapping[int, Any], what: str) -> tuple[int, int]:
    """``(id, category_id)`` of one ``segments_info`` entry, rejecting VOID and repeated ids."""
    if "id" not in segment or "category_id" not in segment:
        raise ValueError(f"{what} segment {dict(segment)} needs 'id' and 'category_id'")
    segment_id, category = int(segment["id"]), int(segment["category_id"])
    if segment_id == VOID:
        raise ValueError(f"{what} segment id {VOID} is reserved for VOID")
    if segment_id in seen:
        raise ValueError(f"{what} segment id {segment_id} is listed twice")
    return segment_id, category


def _quote(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(item) for item in items[:_MAX_LISTED])
    return f"[{shown}{', …' if len(items) > _MAX_LISTED else ''}] ({len(items)} in all)"


def _load_json(path: Path) -> dict[str, Any]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'annotations' list")
    return data


def _panoptic_categories(data: Mapping[str, Any], path: Path) -> dict[int, bool]:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: the ground-truth JSON needs a non-empty 'categories' list")
    try:
        return {int(entry["id"]): bool(entry["isthing"]) for entry in categories}
    except KeyError as error:
        raise ValueError(f"{path}: every category needs 'id' and 'isthing' ({error} missing)") from None


def _annotations_by_image(data: Mapping[str, Any], path: Path) -> dict[Any, Mapping[str, Any]]:
    """``image_id`` -> annotation, in file order; every annotation checked for the fields we read."""
    annotations: dict[Any, Mapping[str, Any]] = {}
    for annotation in data["annotations"]:
        missing = [key for key in ("image_id", "file_name", "segments_info") if key not in annotation]
        if missing:
            raise ValueError(f"{path}: an annotation lacks {missing}")
        if annotation["image_id"] in annotations:
            raise ValueError(f"{path}: image_id {annotation['image_id']!r} is annotated twice")
        annotations[annotation["image_id"]] = annotation
    return annotations


def _check_same_images(ground_truth: Mapping[Any, Any], prediction: Mapping[Any, Any]) -> None:
    missing = [image_id for image_id in ground_truth if image_id not in prediction]
    if missing:
        raise ValueError(f"no prediction for ground-truth image ids {_quote(missing)}")
    extra = [image_id for image_id in prediction if image_id not in ground_truth]
    if extra:
        raise ValueError(f"predictions for image ids absent from the ground truth: {_quote(extra)}")


def _read_panoptic_png(path: Path) -> np.ndarray:
    """``(H, W)`` int64 segment ids of a panoptic RGB PNG."""
    with Image.open(path) as image:
        return rgb_to_id(np.asarray(image.convert("RGB")))


def _read_label_png(path: Path) -> np.ndarray:
    """``(H, W)`` class indices of a single-channel (``L``, ``P``, ``I``, ``I;16``) label PNG."""
    with Image.open(path) as image:
        labels = np.asarray(image)
    if labels.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label PNG, got shape {labels.shape}")
    return labels.astype(np.int64)


def _semantic_pairs(gt_dir: Path, pred_dir: Path) -> list[tuple[Path, Path]]:
    gt_paths = sorted(gt_dir.glob("*.png"))
    if not gt_paths:
        raise ValueError(f"{gt_dir}: no ground-truth *.png files")
    missing = [path.name for path in gt_paths if not (pred_dir / path.name).is_file()]
    if missing:
        raise ValueError(f"{pred_dir}: no prediction for ground-truth files {_quote(missing)}")
    return [(path, pred_dir / path.name) for path in gt_paths]


def _count_classes(pairs: Sequence[tuple[Path, Path]], ignore_index: int) -> int:
    """1 + the largest label other than ``ignore_index`` in any GT or predicted PNG."""
    largest = -1
    for path in (path for pair in pairs for path in pair):
        labels = _read_label_png(path)
        labels = labels[labels != ignore_index]
        if labels.size:
            largest = max(largest, int(labels.max()))
    if largest < 0:
        raise ValueError("found no class label in the PNGs (all pixels are ignore_index)")
    return largest + 1
