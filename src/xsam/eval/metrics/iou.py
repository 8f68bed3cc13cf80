"""IoU-family metrics: semantic segmentation (confusion matrix) and mask IoU (referring, reasoning,
interactive). Results are fractions in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SemanticMetric:
    """Confusion-matrix semantic metrics: mIoU, fwIoU, mACC, pACC over ``num_classes`` classes.

    Pixels whose ground truth is ``ignore_index`` are skipped. Classes absent from both prediction and
    ground truth (zero union) are left out of the means, as in the official evaluator.
    """

    num_classes: int
    ignore_index: int = 255
    confusion: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one image: ``(H, W)`` integer label maps (rows = ground truth, columns = prediction)."""
        prediction, ground_truth = np.asarray(prediction), np.asarray(ground_truth)
        if prediction.shape != ground_truth.shape:
            raise ValueError(
                f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in shape"
            )
        valid = ground_truth != self.ignore_index
        gt, pred = ground_truth[valid].astype(np.int64), prediction[valid].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(f"ground-truth labels must be in [0, {self.num_classes}) or {self.ignore_index}")
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted labels must be in [0, {self.num_classes})")
        self.confusion += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def merge(self, other: SemanticMetric) -> None:
        """Add another accumulator's counts (e.g. another process's share of the images)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.confusion += other.confusion

    def compute(self) -> dict[str, float]:
        true_positive = np.diag(self.confusion).astype(np.float64)
        gt_pixels = self.confusion.sum(1).astype(np.float64)
        pred_pixels = self.confusion.sum(0).astype(np.float64)
        union = gt_pixels + pred_pixels - true_positive
        present = union > 0
        iou = np.divide(true_positive, union, out=np.zeros_like(true_positive), where=present)
        accuracy = np.divide(true_positive, gt_pixels, out=np.zeros_like(true_positive), where=gt_pixels > 0)
        total = gt_pixels.sum()
        frequency = gt_pixels / total if total else gt_pixels
        return {
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "fwiou": float((frequency[present] * iou[present]).sum()),
            "macc": float(accuracy[gt_pixels > 0].mean()) if (gt_pixels > 0).any() else 0.0,
            "pacc": float(true_positive.sum() / total) if total else 0.0,
        }


@dataclass
class MaskIoUMetric:
    """cIoU (total intersection / total union) and gIoU (mean per-sample IoU) of binary masks.

    ``ignore`` pixels are excluded from both prediction and ground truth; a sample whose union is
    empty counts IoU 1.0 (nothing to find, nothing found), as in the official evaluator.
    """

    intersection: int = 0
    union: int = 0
    per_sample: list[float] = field(default_factory=list)

    def update(
        self, prediction: np.ndarray, ground_truth: np.ndarray, ignore: np.ndarray | None = None
    ) -> None:
        prediction, ground_truth = np.asarray(prediction, bool), np.asarray(ground_truth, bool)
        if prediction.shape != ground_truth.shape:
            raise ValueError(
                f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in shape"
            )
        if ignore is not None:
            keep = ~np.asarray(ignore, bool)
            prediction, ground_truth = prediction & keep, ground_truth & keep
        intersection = int((prediction & ground_truth).sum())
        union = int((prediction | ground_truth).sum())
        self.intersection += intersection
        self.union += union
        self.per_sample.append(intersection / union if union else 1.0)

    def merge(self, other: MaskIoUMetric) -> None:
        """Add another accumulator's samples after this one's."""
        self.intersection += other.intersection
        self.union += other.union
        self.per_sample.extend(other.per_sample)

    def compute(self) -> dict[str, float]:
        return {
            "ciou": self.intersection / self.union if self.union else 1.0,
            "giou": float(np.mean(self.per_sample)) if self.per_sample else 0.0,
        }
