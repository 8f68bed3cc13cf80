"""Grounded conversation generation (GCG) metrics, as GLaMM's GranD-f evaluation defines them:
METEOR and CIDEr of the caption, AP50 of the masks with every object in one category and every mask
scoring 1.0, and the mean over images of a greedy one-to-one mask mIoU.

METEOR, AP50 and mIoU are fractions in [0, 1]; CIDEr keeps its natural scale (10.0 for a perfect
caption, see :mod:`xsam.eval.metrics.caption`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xsam.data.formats.json_fields import load_json
from xsam.eval.metrics.caption import caption_scores
from xsam.eval.metrics.coco_ap import MaskAPMetric, PathLike, preview, segmentation_rle

METRIC_NAMES = ("meteor", "cider", "ap50", "miou")


def mask_iou_matrix(predicted: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """``(P, G)`` float64 IoUs of ``(P, H, W)`` and ``(G, H, W)`` bool masks; 0.0 where both are empty."""
    predicted, ground_truth = np.asarray(predicted, bool), np.asarray(ground_truth, bool)
    if predicted.ndim != 3 or ground_truth.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {predicted.shape} and {ground_truth.shape}")
    if len(predicted) and len(ground_truth) and predicted.shape[1:] != ground_truth.shape[1:]:
        raise ValueError(f"predicted masks {predicted.shape[1:]} and ground truth {ground_truth.shape[1:]}")
    ious = np.zeros((len(predicted), len(ground_truth)))
    ground_truth_area = ground_truth.sum(axis=(1, 2))
    for row, mask in enumerate(predicted):
        intersection = np.logical_and(ground_truth, mask).sum(axis=(1, 2))
        union = ground_truth_area + mask.sum() - intersection
        np.divide(intersection, union, out=ious[row], where=union > 0)
    return ious


def greedy_pairing_miou(predicted: np.ndarray, ground_truth: np.ndarray) -> float:
    """Greedy one-to-one pairing mIoU of one image (the official GCG mIoU, from GLaMM).

    ``predicted`` ``(P, H, W)`` and ``ground_truth`` ``(G, H, W)`` bool masks. Repeatedly takes the
    largest remaining IoU while it is above 0 (the first in row-major order on ties), pairs that
    prediction with that ground truth and removes both; returns the mean of the paired IoUs, 0.0 when
    nothing is paired. Unpaired masks on either side do not lower it: greedy, not Hungarian, and not
    divided by the number of ground-truth masks. A pair of empty masks has IoU 0.0 (GLaMM's own
    division would give NaN there).
    """
    ious = mask_iou_matrix(predicted, ground_truth)
    paired = []
    while ious.size and ious.max() > 0:
        row, column = np.unravel_index(np.argmax(ious), ious.shape)
        paired.append(float(ious[row, column]))
        # -1 keeps the removed row and column out of every later maximum, like deleting them
        ious[row, :] = -1.0
        ious[:, column] = -1.0
    return float(np.mean(paired)) if paired else 0.0


def _index_captions(caption_ground_truth: Mapping[str, Any]) -> dict[Hashable, list[str]]:
    """Image id -> its reference captions, from a COCO-style caption file (``annotations``)."""
    annotations = (
        caption_ground_truth.get("annotations") if isinstance(caption_ground_truth, Mapping) else None
    )
    if not isinstance(annotations, list):
        raise ValueError("caption ground truth needs a list of 'annotations'")
    captions: dict[Hashable, list[str]] = {}
    for annotation in annotations:
        if not isinstance(annotation, Mapping) or "image_id" not in annotation or "caption" not in annotation:
            raise ValueError(f"caption annotation without 'image_id' and 'caption': {annotation!r}")
        captions.setdefault(annotation["image_id"], []).append(str(annotation["caption"]))
    return captions


@dataclass
class GCGMetric:
    """GCG: METEOR, CIDEr (captions), AP50 (:class:`MaskAPMetric` single-category) and mIoU (greedy
    pairing, averaged over images).

    ``mask_ground_truth`` is the ``{val,test}_gcg_coco_mask_gt.json`` dict (COCO instances, image ids
    are the image file stems); ``caption_ground_truth`` the ``..._caption_gt.json`` dict (COCO style:
    ``images`` plus ``annotations`` with ``image_id`` and ``caption``).
    """

    mask_ground_truth: dict[str, Any] = field(repr=False)
    caption_ground_truth: dict[str, Any] = field(repr=False)
    captions: dict[Hashable, str] = field(default_factory=dict)
    image_mious: dict[Hashable, float] = field(default_factory=dict)
    mask_ap: MaskAPMetric = field(init=False, repr=False)
    _references: dict[Hashable, list[str]] = field(init=False, repr=False, compare=False)
    _annotations: dict[Hashable, list[Mapping[str, Any]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.mask_ap = MaskAPMetric(self.mask_ground_truth, single_category=True)
        self._references = _index_captions(self.caption_ground_truth)
        self._annotations = {image_id: [] for image_id in self.mask_ap.image_ids}
        for annotation in self.mask_ground_truth["annotations"]:
            self._annotations[annotation["image_id"]].append(annotation)

    @property
    def image_ids(self) -> list[Hashable]:
        """The images of the mask ground truth, in file order."""
        return self.mask_ap.image_ids

    def ground_truth_masks(self, image_id: Hashable, *, size: tuple[int, int] | None = None) -> np.ndarray:
        """``(G, H, W)`` bool ground-truth masks of one image; ``size`` is used when the file has none."""
        from pycocotools import mask as mask_utils

        size = self.mask_ap.image_size(image_id) or size
        height, width = size if size is not None else (None, None)
        rles = [segmentation_rle(a["segmentation"], height, width) for a in self._annotations[image_id]]
        masks = [mask_utils.decode(rle).astype(bool) for rle in rles if rle is not None]
        if masks:
            return np.stack(masks)
        if size is None:
            raise ValueError(f"image {image_id!r} has no ground-truth masks and no size")
        return np.zeros((0, *size), dtype=bool)

    def update(self, image_id: Hashable, caption: str, masks: np.ndarray) -> None:
        """Add one image's prediction: its caption and ``masks`` ``(N, H, W)`` bool (N may be 0)."""
        masks = np.asarray(masks).astype(bool, copy=False)
        if image_id in self.captions:
            raise ValueError(f"image {image_id!r} was already scored")
        if image_id not in self._references:
            raise ValueError(f"image {image_id!r} has no caption in the caption ground truth")
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        ground_truth = self.ground_truth_masks(image_id, size=masks.shape[1:])
        miou = greedy_pairing_miou(masks, ground_truth)
        self.mask_ap.add(image_id, masks, [1.0] * len(masks), [1] * len(masks))
        self.image_mious[image_id] = miou
        self.captions[image_id] = caption

    def merge(self, other: GCGMetric) -> None:
        """Fold in another process's metric over the same ground truth (disjoint images)."""
        overlap = self.captions.keys() & other.captions.keys()
        if overlap:
            raise ValueError(f"both metrics scored images {preview(overlap)}")
        self.mask_ap.merge(other.mask_ap)
        self.captions.update(other.captions)
        self.image_mious.update(other.image_mious)

    def compute(self) -> dict[str, float]:
        """``meteor``, ``cider`` (natural scale), ``ap50`` (COCOeval ``stats[1]``), ``miou``; all 0.0
        when nothing was added."""
        if not self.captions:
            return dict.fromkeys(METRIC_NAMES, 0.0)
        references = {image_id: self._references[image_id] for image_id in self.captions}
        scores = caption_scores(references, self.captions)
        return {
            "meteor": scores["meteor"],
            "cider": scores["cider"],
            "ap50": self.mask_ap.compute()["ap50"],
            "miou": float(np.mean(list(self.image_mious.values()))),
        }


def score_gcg_files(
    mask_gt_json: PathLike, caption_gt_json: PathLike, pred_json: PathLike
) -> dict[str, float]:
    """GCG metrics of a predictions file against GranD-f-style ground-truth files.

    ``pred_json`` holds a JSON list with one entry per image::

        [{"image_id": "<file stem>", "caption": "A man holding a red cup.",
          "masks": [{"size": [H, W], "counts": "<COCO RLE>"}, ...]}, ...]

    ``masks`` are COCO RLEs (compressed with str counts, or uncompressed) at the image size, one per
    grounded phrase, possibly none. Every image of the mask ground truth must be predicted exactly
    once and every predicted image must be in it. Returns :meth:`GCGMetric.compute`'s dict.
    """
    metric = GCGMetric(
        load_json(mask_gt_json),
        load_json(caption_gt_json),
    )
    predictions = load_json(pred_json)
    if not isinstance(predictions, list):
        raise ValueError(f"GCG predictions file {pred_json} must hold a list of per-image predictions")
    for prediction in predictions:
        if not isinstance(prediction, Mapping) or not {"image_id", "caption", "masks"} <= prediction.keys():
            raise ValueError(f"a GCG prediction needs 'image_id', 'caption' and 'masks', got {prediction!r}")
    predicted_ids = [prediction["image_id"] for prediction in predictions]
    unknown = set(predicted_ids) - set(metric.image_ids)
    if unknown:
        raise ValueError(f"{pred_json}: images not in the ground truth {mask_gt_json}: {preview(unknown)}")
    missing = set(metric.image_ids) - set(predicted_ids)
    if missing:
        raise ValueError(f"{pred_json}: ground-truth images without a prediction: {preview(missing)}")
    for prediction in predictions:
        image_id = prediction["image_id"]
        try:
            masks = _decode_masks(metric, image_id, prediction["masks"])
        except ValueError as error:
            raise ValueError(f"{pred_json}: image {image_id!r}: {error}") from None
        metric.update(image_id, prediction["caption"], masks)
    return metric.compute()


def _decode_masks(metric: GCGMetric, image_id: Hashable, rles: list[Mapping[str, Any]]) -> np.ndarray:
    """``(N, H, W)`` bool masks from a prediction's RLE list (N may be 0: then H, W are the image's)."""
    from pycocotools import mask as mask_utils

    if not isinstance(rles, list):
        raise ValueError(f"prediction of image {image_id!r}: 'masks' must be a list of RLEs")
    if not rles:
        # an image the ground truth gives no size has no masks either, so any size scores the same
        return np.zeros((0, *(metric.mask_ap.image_size(image_id) or (0, 0))), dtype=bool)
    if not all(isinstance(rle, Mapping) for rle in rles):
        raise ValueError(f"prediction of image {image_id!r}: 'masks' must be RLE dicts")
    return np.stack([mask_utils.decode(segmentation_rle(rle, None, None)).astype(bool) for rle in rles])
