"""COCO mask AP (pycocotools' ``COCOeval`` with ``iouType="segm"``) over accumulated predictions.

Results are fractions in [0, 1]. Where COCOeval finds no ground truth to score against (a size bucket
with no object, or no ground truth at all among the evaluated images) it reports -1.0, and so do we:
the value is kept as pycocotools gives it so that numbers compare one to one with the official tools.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from xsam.data.formats.json_fields import load_json
from xsam.processing import decode_rle, encode_rle

PathLike = str | os.PathLike
STAT_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")
"""Names of ``COCOeval.stats[0:6]``: AP@[.50:.95], AP50, AP75, AP small / medium / large."""

SINGLE_CATEGORY = {"id": 1, "name": "object"}


def segmentation_size(segmentation: Any) -> tuple[int, int] | None:
    """``(height, width)`` of an RLE segmentation (its ``size``), ``None`` for polygons."""
    if isinstance(segmentation, Mapping) and "size" in segmentation:
        height, width = segmentation["size"]
        return int(height), int(width)
    return None


def segmentation_rle(segmentation: Any, height: int | None, width: int | None) -> dict[str, Any] | None:
    """Compressed RLE of a COCO segmentation: polygons, uncompressed RLE (list counts) or compressed RLE.

    Polygons need the image ``height`` and ``width``; RLE carries its own size. Polygons with fewer
    than three points are dropped (as detectron2 and our readers do; pycocotools would read a 4-number
    polygon as a box); ``None`` when none is left.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("an RLE segmentation needs 'counts' and 'size'")
        decode_rle(segmentation)  # checks that the counts describe a mask of its size
        if isinstance(segmentation["counts"], list):
            rle_height, rle_width = segmentation["size"]
            return mask_utils.frPyObjects(dict(segmentation), rle_height, rle_width)
        return dict(segmentation)
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise ValueError("a polygon segmentation needs the image height and width")
        polygons = [list(polygon) for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _ground_truth_sizes(ground_truth: Mapping[str, Any]) -> dict[Hashable, tuple[int, int] | None]:
    """Image id -> ``(height, width)`` from the image entry, else from one of its RLE annotations."""
    for key in ("images", "annotations"):
        if not isinstance(ground_truth.get(key), list):
            raise ValueError(f"ground truth needs a list of {key!r}")
    sizes: dict[Hashable, tuple[int, int] | None] = {}
    for image in ground_truth["images"]:
        if not isinstance(image, Mapping) or "id" not in image:
            raise ValueError(f"ground-truth image without an 'id': {image!r}")
        if image["id"] in sizes:
            raise ValueError(f"ground-truth image id {image['id']!r} appears twice")
        has_size = "height" in image and "width" in image
        sizes[image["id"]] = (int(image["height"]), int(image["width"])) if has_size else None
    for annotation in ground_truth["annotations"]:
        for key in ("image_id", "segmentation"):
            if key not in annotation:
                raise ValueError(f"ground-truth annotation {annotation.get('id')!r} has no {key!r}")
        if annotation["image_id"] not in sizes:
            raise ValueError(
                f"ground-truth annotation {annotation.get('id')!r} refers to unknown image "
                f"{annotation['image_id']!r}"
            )
        if sizes[annotation["image_id"]] is None:
            sizes[annotation["image_id"]] = segmentation_size(annotation["segmentation"])
    return sizes


@dataclass
class MaskAPMetric:
    """COCO mask AP through pycocotools ``COCOeval(iouType="segm")``, maxDets ``[1, 10, 100]``.

    ``ground_truth`` is a COCO instances-style dict (``images``, ``annotations``, ``categories``);
    segmentations may be polygons, uncompressed or compressed RLE, and image ids any hashable (str ids,
    as in the GCG files, are mapped to ints internally so that mixed id types cannot confuse
    pycocotools). Images without ``height``/``width`` take their size from their RLE annotations.
    Annotations without ``area`` get the mask area, without ``iscrowd`` 0.

    ``predictions`` are COCO results (``image_id``, ``category_id``, ``segmentation`` as compressed RLE
    with str counts, ``score``). Only ``evaluated_image_ids`` are scored, so a run over a subset of the
    images is scored on its own images. Predictions carry no ``bbox``: areas (and with them the
    small / medium / large buckets) come from the masks, as in detectron2's segm evaluation.

    ``single_category`` is the GCG AP50 protocol: every ground truth and prediction becomes category 1
    and every prediction scores 1.0.
    """

    ground_truth: dict[str, Any] = field(repr=False)
    single_category: bool = False
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    evaluated_image_ids: set[Hashable] = field(default_factory=set)
    _image_sizes: dict[Hashable, tuple[int, int] | None] = field(init=False, repr=False, compare=False)
    _category_ids: set[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ground_truth, Mapping):
            raise ValueError("ground truth must be a COCO-style dict")
        self._image_sizes = _ground_truth_sizes(self.ground_truth)
        categories = self.ground_truth.get("categories")
        if self.single_category:
            self._category_ids = {SINGLE_CATEGORY["id"]}
        elif isinstance(categories, list) and categories:
            self._category_ids = {int(category["id"]) for category in categories}
        else:
            raise ValueError("ground truth needs a non-empty list of 'categories'")

    @classmethod
    def from_json(cls, path: PathLike, **kwargs: Any) -> MaskAPMetric:
        """Metric over the COCO instances JSON at ``path`` (keyword arguments go to the constructor)."""
        ground_truth = load_json(path)
        if not isinstance(ground_truth, dict):
            raise ValueError(f"ground truth file {path} must hold a COCO-style dict")
        return cls(ground_truth, **kwargs)

    @property
    def image_ids(self) -> list[Hashable]:
        """The ground-truth image ids, in file order."""
        return list(self._image_sizes)

    def image_size(self, image_id: Hashable) -> tuple[int, int] | None:
        """``(height, width)`` of a ground-truth image, ``None`` when the ground truth does not say."""
        self._check_image(image_id)
        return self._image_sizes[image_id]

    def add(
        self,
        image_id: Hashable,
        masks: np.ndarray,
        scores: Sequence[float],
        category_ids: Sequence[int],
    ) -> None:
        """Add one image's predictions: ``masks`` ``(N, H, W)`` bool with one score and category each.

        The image counts as evaluated even when ``N == 0`` (its ground truth then counts as missed).
        """
        masks = np.asarray(masks).astype(bool, copy=False)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        if not len(masks) == len(scores) == len(category_ids):
            raise ValueError(
                f"got {len(masks)} masks, {len(scores)} scores and {len(category_ids)} category ids"
            )
        self._check_image(image_id)
        expected = self._image_sizes[image_id]
        if len(masks) and expected is not None and masks.shape[1:] != expected:
            raise ValueError(
                f"masks of image {image_id!r} are {masks.shape[1:]}, the ground truth is {expected}"
            )
        for category_id in category_ids:
            self._check_category(category_id)
        for mask, score, category_id in zip(masks, scores, category_ids, strict=True):
            self.predictions.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "segmentation": encode_rle(mask),
                    "score": float(score),
                }
            )
        self.evaluated_image_ids.add(image_id)

    def add_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Add COCO-format results (each with ``image_id``, ``category_id``, ``segmentation``, ``score``).

        Their images count as evaluated. Any ``bbox`` (or other extra key) is dropped; polygon and
        uncompressed-RLE segmentations are converted to compressed RLE. ``score`` may be left out in
        ``single_category`` mode, which ignores it.
        """
        converted = []
        for index, result in enumerate(results):
            try:
                converted.append(self._converted_result(result))
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"result {index}: {error}") from None
        self.predictions.extend(converted)
        self.evaluated_image_ids.update(result["image_id"] for result in converted)

    def merge(self, other: MaskAPMetric) -> None:
        """Fold in another process's metric over the same ground truth."""
        if other.single_category != self.single_category:
            raise ValueError("cannot merge a single-category metric with a per-category one")
        unknown = other.evaluated_image_ids - self._image_sizes.keys()
        if unknown:
            raise ValueError(
                f"the other metric evaluated images not in this ground truth: {preview(unknown)}"
            )
        self.predictions.extend(other.predictions)
        self.evaluated_image_ids |= other.evaluated_image_ids

    def compute(self) -> dict[str, float]:
        """``ap``, ``ap50``, ``ap75``, ``aps``, ``apm``, ``apl`` (``COCOeval.stats[0:6]``), fractions.

        -1.0 where COCOeval has no ground truth to score against; all 0.0 when there are no
        predictions at all (pycocotools cannot load an empty result list).
        """
        if not self.predictions:
            return dict.fromkeys(STAT_NAMES, 0.0)
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        index = {image_id: number for number, image_id in enumerate(self._image_sizes, start=1)}
        evaluated = sorted(index[image_id] for image_id in self.evaluated_image_ids)
        # pycocotools prints progress and the summary table; the numbers are read from `stats`
        with contextlib.redirect_stdout(io.StringIO()):
            coco_ground_truth = COCO()
            coco_ground_truth.dataset = self._coco_ground_truth(index)
            coco_ground_truth.createIndex()
            coco_predictions = coco_ground_truth.loadRes(self._coco_results(index))
            evaluator = COCOeval(coco_ground_truth, coco_predictions, iouType="segm")
            evaluator.params.imgIds = evaluated
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:6], strict=True)}

    def _check_image(self, image_id: Hashable) -> None:
        if image_id not in self._image_sizes:
            example = next(iter(self._image_sizes), None)
            raise ValueError(
                f"image id {image_id!r} is not in the ground truth (its ids look like {example!r})"
            )

    def _check_category(self, category_id: int) -> None:
        if not self.single_category and int(category_id) not in self._category_ids:
            raise ValueError(f"category id {category_id!r} is not a ground-truth category")

    def _converted_result(self, result: Mapping[str, Any]) -> dict[str, Any]:
        required = ("image_id", "segmentation") + (() if self.single_category else ("category_id", "score"))
        missing = [key for key in required if key not in result]
        if missing:
            raise ValueError(f"result {dict(result)!r} lacks {missing}")
        image_id = result["image_id"]
        self._check_image(image_id)
        category_id = int(result.get("category_id", SINGLE_CATEGORY["id"]))
        self._check_category(category_id)
        size = self._image_sizes[image_id] or (None, None)
        segmentation = segmentation_rle(result["segmentation"], *size)
        if segmentation is None:
            raise ValueError(f"result for image {image_id!r} has no polygon with three or more points")
        return {
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation,
            "score": float(result.get("score", 1.0)),
        }

    def _resolved_sizes(self) -> dict[Hashable, tuple[int, int] | None]:
        """Ground-truth sizes, with images the ground truth leaves unsized taking their predictions'."""
        sizes = dict(self._image_sizes)
        for prediction in self.predictions:
            if sizes[prediction["image_id"]] is None:
                sizes[prediction["image_id"]] = segmentation_size(prediction["segmentation"])
        return sizes

    def _coco_ground_truth(self, index: Mapping[Hashable, int]) -> dict[str, Any]:
        """A fresh COCO dataset dict restricted to the evaluated images, with int image ids."""
        from pycocotools import mask as mask_utils

        sizes = self._resolved_sizes()
        images = []
        for image_id in self.evaluated_image_ids:
            image = {"id": index[image_id]}
            if sizes[image_id] is not None:
                image["height"], image["width"] = sizes[image_id]
            images.append(image)
        annotations = []
        # renumbered from 1: COCOeval treats a matched ground-truth id of 0 as "unmatched"
        for number, annotation in enumerate(self.ground_truth["annotations"], start=1):
            image_id = annotation["image_id"]
            if image_id not in self.evaluated_image_ids:
                continue
            size = sizes[image_id] or (None, None)
            segmentation = segmentation_rle(annotation["segmentation"], *size)
            if segmentation is None:
                continue
            area = annotation.get("area")
            annotations.append(
                {
                    "id": number,
                    "image_id": index[image_id],
                    "category_id": SINGLE_CATEGORY["id"]
                    if self.single_category
                    else int(annotation["category_id"]),
                    "segmentation": segmentation,
                    "area": float(area) if area is not None else float(mask_utils.area(segmentation)),
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                }
            )
        categories = [SINGLE_CATEGORY] if self.single_category else self.ground_truth["categories"]
        return {"images": images, "annotations": annotations, "categories": [dict(c) for c in categories]}

    def _coco_results(self, index: Mapping[Hashable, int]) -> list[dict[str, Any]]:
        """Fresh result dicts (loadRes writes into them) with int image ids and no ``bbox``."""
        return [
            {
                "image_id": index[prediction["image_id"]],
                "category_id": SINGLE_CATEGORY["id"] if self.single_category else prediction["category_id"],
                "segmentation": prediction["segmentation"],
                "score": 1.0 if self.single_category else prediction["score"],
            }
            for prediction in self.predictions
        ]


def preview(values: Any, limit: int = 5) -> str:
    """Up to ``limit`` of ``values`` (sorted, as reprs) for an error message, with a count of the rest."""
    values = sorted(values, key=str)
    shown = ", ".join(repr(value) for value in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def score_instance_files(
    gt_json: PathLike,
    pred_json: PathLike,
    *,
    image_ids: Literal["predicted", "all"] = "predicted",
    single_category: bool = False,
) -> dict[str, float]:
    """Mask AP of a COCO results file (a JSON list of results) against a COCO instances file.

    ``image_ids="predicted"`` scores the images that have at least one result (a subset run);
    ``"all"`` scores every ground-truth image, counting the unpredicted ones as missed.
    Returns :meth:`MaskAPMetric.compute`'s dict (fractions; -1.0 where there is no ground truth).
    """
    if image_ids not in ("predicted", "all"):
        raise ValueError(f"image_ids must be 'predicted' or 'all', got {image_ids!r}")
    metric = MaskAPMetric.from_json(gt_json, single_category=single_category)
    results = load_json(pred_json)
    if not isinstance(results, list):
        raise ValueError(f"predictions file {pred_json} must hold a list of COCO results")
    try:
        metric.add_results(results)
    except ValueError as error:
        raise ValueError(f"{pred_json}: {error}") from None
    if image_ids == "all":
        metric.evaluated_image_ids.update(metric.image_ids)
    return metric.compute()
