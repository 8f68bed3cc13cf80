"""Score saved predictions without a model (``xsam score``): any model's outputs, ours or a peer's.

``--task`` names a metric family (:class:`~xsam.tasks.base.Metric`) or a task scored by one family
(``referring`` -> ``mask_iou``, ``vgd`` -> its instance AP, ...). Formats (``xsam eval
--save-predictions`` writes exactly these):

* ``panoptic``: COCO panoptic JSON + PNG folder, for ground truth and prediction alike (what
  panopticapi's ``pq_compute`` takes).
* ``semantic``: folders of single-channel label PNGs matched by file name; 255 = ignore.
* ``instance`` / ``vgd``: a COCO instances JSON as ground truth and a COCO results list
  (``image_id``, ``category_id``, ``segmentation`` RLE, ``score``) as prediction.
* ``referring`` / ``reasoning`` / ``interactive``: two JSON lists of ``{"id", "segmentation": RLE}``
  matched by ``id``; a ground-truth entry may add ``"ignore": RLE`` (pixels left out of both).
* ``gcg``: the GranD-f ``*_gcg_coco_mask_gt.json`` and ``*_gcg_coco_caption_gt.json`` as ground truth
  and a JSON list of ``{"image_id", "caption", "masks": [RLE, ...]}`` as prediction.

Every result is a fraction in [0, 1] (CIDEr on its own scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..data.formats.json_fields import as_list, field, load_json
from ..processing import decode_rle
from ..tasks.base import Metric
from ..tasks.registry import TASKS
from .metrics.iou import MaskIoUMetric

PathLike = str | Path


def score_names() -> tuple[str, ...]:
    """What ``xsam score --task`` takes: every metric family, and every task scored by exactly one."""
    tasks = [handler.name for handler in TASKS.values() if len(handler.metrics) == 1]
    return tuple(dict.fromkeys([*(metric.value for metric in Metric), *tasks]))


def score_metric(name: str) -> Metric:
    """The metric family ``xsam score --task NAME`` scores with: a family name, or a task's only one.

    Raises:
        ValueError: neither (the valid names listed).
    """
    if name in {metric.value for metric in Metric}:
        return Metric(name)
    handler = TASKS.get(name)
    if handler is not None and len(handler.metrics) == 1:
        return handler.metrics[0]
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(score_names())}")


def _decode(rle: Any, where: str) -> np.ndarray:
    try:
        return decode_rle(rle)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _by_id(path: PathLike, what: str) -> dict[Any, Mapping[str, Any]]:
    entries = as_list(load_json(path), "the top level", str(path))
    indexed: dict[Any, Mapping[str, Any]] = {}
    for index, entry in enumerate(entries):
        key = field(entry, "id", f"{path}: entry {index}")
        if key in indexed:
            raise ValueError(f"{path}: {what} id {key!r} appears twice")
        indexed[key] = entry
    return indexed


def score_mask_iou_files(gt_json: PathLike, pred_json: PathLike) -> dict[str, float]:
    """cIoU and gIoU of single-mask predictions (referring, reasoning, interactive).

    Raises:
        ValueError: ids present in one file only (the message lists a few), malformed entries, or a
            prediction whose size differs from its ground truth.
    """
    truth, predicted = _by_id(gt_json, "ground-truth"), _by_id(pred_json, "prediction")
    missing = sorted(set(truth) - set(predicted), key=str)
    extra = sorted(set(predicted) - set(truth), key=str)
    if missing or extra:
        raise ValueError(
            f"ids differ: {len(missing)} ground-truth id(s) without prediction {missing[:5]}, "
            f"{len(extra)} predicted id(s) not in the ground truth {extra[:5]}"
        )
    metric = MaskIoUMetric()
    for key, entry in truth.items():
        where = f"{gt_json}: id {key!r}"
        target = _decode(field(entry, "segmentation", where), where)
        ignore = _decode(entry["ignore"], f"{where} ignore") if "ignore" in entry else None
        at = f"{pred_json}: id {key!r}"
        mask = _decode(field(predicted[key], "segmentation", at), at)
        if mask.shape != target.shape:
            raise ValueError(f"{at}: mask is {mask.shape}, ground truth is {target.shape}")
        metric.update(mask, target, ignore)
    return metric.compute()


def score_files(task: str, **files: Any) -> dict[str, float]:
    """Dispatch ``xsam score --task``: ``files`` are the keyword arguments of the metric's scorer.

    Raises:
        ValueError: unknown task or metric (valid ones listed) or a missing argument (named).
    """
    from .metrics.coco_ap import score_instance_files
    from .metrics.gcg import score_gcg_files
    from .metrics.panoptic import score_panoptic_files, score_semantic_files

    scorers = {
        Metric.PANOPTIC: (score_panoptic_files, ("gt_json", "gt_dir", "pred_json", "pred_dir"), ()),
        Metric.SEMANTIC: (score_semantic_files, ("gt_dir", "pred_dir"), ("num_classes",)),
        Metric.INSTANCE: (score_instance_files, ("gt_json", "pred_json"), ()),
        Metric.VGD: (score_instance_files, ("gt_json", "pred_json"), ()),
        Metric.MASK_IOU: (score_mask_iou_files, ("gt_json", "pred_json"), ()),
        Metric.GCG: (score_gcg_files, ("gt_json", "caption_gt_json", "pred_json"), ()),
    }
    scorer, required, optional = scorers[score_metric(task)]
    missing = [name for name in required if files.get(name) is None]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(f"--task {task} needs {flags}")
    positional = [files[name] for name in required]
    keywords = {name: files[name] for name in optional if files.get(name) is not None}
    return scorer(*positional, **keywords)
