"""Visual prompts for visual grounded (VGD) and interactive segmentation: synthesis from instance
masks, and the COCO-VGD and COCO-Interactive readers.

A visual prompt is a binary mask drawn on the image: ``"point"`` (a disk of
radius 10 px), ``"scribble"`` (a wavy stroke dilated by 5 px), ``"box"`` (a filled rectangle) or
``"mask"`` (a blurred copy of the instance mask). Readers put them in
``Segment.visual_prompts[kind]`` as lazy :class:`~xsam.tasks.records.Mask` objects; prompts whose
stored mask is empty are left out of that dict.

Synthesis (:func:`synthesize_visual_prompts`) follows the official generator's distributions; it
draws every random number from the ``numpy.random.Generator`` it is given, so a prompt is a pure
function of ``(mask, kind, generator state)``. scipy is needed for synthesis and dilation only
(imported on first use).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xsam.data.formats.json_fields import as_list, field, load_json
from xsam.tasks.records import Mask, Record, Segment

PathLike = str | os.PathLike
PROMPT_KINDS = ("point", "scribble", "box", "mask")
MIN_COMPONENT_AREA = 5
"""Connected components with at most this many pixels get no point / scribble / box prompt."""
POINT_RADIUS = 10
SCRIBBLE_RADIUS = 5
MAX_RETRIES = 1000

_VGD_KEYS = {kind: f"{kind}_visual_prompt" for kind in PROMPT_KINDS}  # COCO-VGD json keys
_PSALM_KEYS = {kind: f"{kind}_visual_prompt_mask" for kind in PROMPT_KINDS}  # COCO-Interactive keys


# --------------------------------------------------------------------------------------- synthesis
def _ndimage():
    try:
        from scipy import ndimage
    except ImportError as error:  # scipy is an extra, not an import-time requirement
        raise ImportError("visual-prompt synthesis needs scipy: pip install 'xsam-torch[train]'") from error
    return ndimage


def disk_offsets(radius: float) -> np.ndarray:
    """``(K, 2)`` ``(row, col)`` steps of length at most ``radius``."""
    reach = math.floor(radius)
    steps = np.arange(-reach, reach + 1)
    rows, cols = np.meshgrid(steps, steps, indexing="ij")
    inside = rows**2 + cols**2 <= radius**2
    return np.stack([rows[inside], cols[inside]], axis=1)


def dilate_whole(mask: np.ndarray, radius: float) -> np.ndarray:
    """Disk dilation of a whole array: one shifted OR per offset of the disk."""
    reach = math.floor(radius)
    grown = np.zeros((mask.shape[0] + 2 * reach, mask.shape[1] + 2 * reach), dtype=bool)
    height, width = mask.shape
    for row, col in disk_offsets(radius):
        grown[reach + row : reach + row + height, reach + col : reach + col + width] |= mask
    return grown[reach : reach + height, reach : reach + width]


def box_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The mask's bounding box grown by ``margin`` and clipped to the image; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )


def dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Every pixel within Euclidean distance ``radius`` of a True pixel of ``mask`` (``(H, W)`` bool):
    a disk of that radius stamped on each pixel, as the official ``enhance_with_circles``."""
    mask = np.asarray(mask, dtype=bool)
    grown = np.zeros_like(mask)
    box = box_slices(mask, math.floor(radius))
    if box is not None:  # only the seeds' box grown by the radius can change
        grown[box] = dilate_whole(mask[box], radius)
    return grown


@dataclass(frozen=True)
class _Component:
    """One connected component: its pixels inside its bounding box ``[top, bottom) x [left, right)``."""

    local: np.ndarray  # (bottom - top, right - left) bool
    top: int
    left: int

    @property
    def bottom(self) -> int:
        return self.top + self.local.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.local.shape[1]

    @property
    def centroid(self) -> tuple[float, float]:
        rows, cols = np.nonzero(self.local)
        return self.top + float(rows.mean()), self.left + float(cols.mean())


def _components(mask: np.ndarray, min_area: int) -> list[_Component]:
    """8-connected components with more than ``min_area`` pixels, in scan order."""
    ndimage = _ndimage()
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    components = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        local = labels[box] == index
        if local.sum() > min_area:
            components.append(_Component(local, box[0].start, box[1].start))
    return components


def _point(component: _Component, rng: np.random.Generator, max_retries: int) -> tuple[int, int]:
    """A random pixel of the component within half its shorter box side of the centroid.

    Candidates are uniform in angle and distance (so denser near the centroid); the first one inside
    the component wins. If none is (thin, curved shapes), the component pixel nearest the centroid.
    """
    center_row, center_col = component.centroid
    radius = 0.5 * min(component.local.shape)
    angles = rng.uniform(0.0, 2.0 * math.pi, max_retries)
    distances = rng.uniform(0.0, radius, max_retries)
    rows = np.clip((center_row + distances * np.cos(angles)).astype(int), component.top, component.bottom - 1)
    cols = np.clip((center_col + distances * np.sin(angles)).astype(int), component.left, component.right - 1)
    inside = component.local[rows - component.top, cols - component.left]
    if inside.any():
        first = int(np.argmax(inside))
        return int(rows[first]), int(cols[first])
    local_rows, local_cols = np.nonzero(component.local)
    nearest = np.argmin(
        (local_rows + component.top - center_row) ** 2 + (local_cols + component.left - center_col) ** 2
    )
    return int(local_rows[nearest] + component.top), int(local_cols[nearest] + component.left)


def _box_iou(boxes: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """IoU of ``(N, 4)`` half-open ``(top, left, bottom, right)`` boxes with one such box."""
    heights = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    widths = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    intersection = heights * widths
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - intersection
    return intersection / np.maximum(union, 1)


def _jittered_box(
    component: _Component, shape: tuple[int, int], rng: np.random.Generator, max_retries: int
) -> tuple[int, int, int, int] | None:
    """A box around the centroid with each side scaled by U(0.5, 1.2), clipped to the image, with
    IoU >= 0.5 against the component's box; the first of ``max_retries`` draws that qualifies."""
    center_row, center_col = component.centroid
    height, width = component.local.shape
    scales = rng.uniform(0.5, 1.2, (max_retries, 2))
    half_heights, half_widths = height * scales[:, 0] / 2, width * scales[:, 1] / 2
    boxes = np.stack(
        [
            np.maximum(np.trunc(center_row - half_heights), 0),
            np.maximum(np.trunc(center_col - half_widths), 0),
            np.minimum(np.trunc(center_row + half_heights), shape[0]),
            np.minimum(np.trunc(center_col + half_widths), shape[1]),
        ],
        axis=1,
    ).astype(int)
    original = (component.top, component.left, component.bottom, component.right)
    good = np.flatnonzero(_box_iou(boxes, original) >= 0.5)
    return None if good.size == 0 else tuple(int(v) for v in boxes[good[0]])


def _scribble(
    component: _Component, shape: tuple[int, int], rng: np.random.Generator, max_retries: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels of one stroke: a diagonal of a jittered box from a random corner to the opposite one,
    its rows displaced by ``A sin(2 pi f t + phase)`` (A ~ U(10, 20) px, f ~ U(0.2, 1), t in [0, 1]
    along the line; the official deformation is vertical whatever the diagonal's direction)."""
    box = _jittered_box(component, shape, rng, max_retries)
    if box is None:
        return None
    top, left, bottom, right = box
    from_top, from_left = rng.integers(0, 2, size=2)
    start = (top if from_top else bottom - 1, left if from_left else right - 1)
    end = (bottom - 1 if from_top else top, right - 1 if from_left else left)
    steps = max(abs(end[0] - start[0]), abs(end[1] - start[1])) + 1
    t = np.linspace(0.0, 1.0, steps)
    amplitude, frequency, phase = rng.uniform(10, 20), rng.uniform(0.2, 1.0), rng.uniform(0, 2 * math.pi)
    rows = start[0] + t * (end[0] - start[0]) + amplitude * np.sin(2 * math.pi * frequency * t + phase)
    cols = start[1] + t * (end[1] - start[1])
    rows = np.clip(np.rint(rows), 0, shape[0] - 1).astype(int)
    cols = np.clip(np.rint(cols), 0, shape[1] - 1).astype(int)
    return rows, cols


def _box(component: _Component, shape: tuple[int, int], rng: np.random.Generator) -> tuple[slice, slice]:
    """The component's box scaled about its centre by one U(0.9, 1.1) factor, clipped to the image."""
    scale = rng.uniform(0.9, 1.1)
    grow_rows = component.local.shape[0] * (scale - 1) / 2
    grow_cols = component.local.shape[1] * (scale - 1) / 2
    top, left = max(0, int(component.top - grow_rows)), max(0, int(component.left - grow_cols))
    bottom = min(shape[0], int(component.bottom + grow_rows))
    right = min(shape[1], int(component.right + grow_cols))
    return slice(top, bottom), slice(left, right)


def synthesize_visual_prompts(
    mask: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    *,
    min_area: int = MIN_COMPONENT_AREA,
    point_radius: float = POINT_RADIUS,
    scribble_radius: float = SCRIBBLE_RADIUS,
    max_retries: int = MAX_RETRIES,
) -> np.ndarray:
    """One visual prompt of ``kind`` for an instance ``mask`` (``(H, W)``, any dtype; non-zero = in).

    ``point``, ``scribble`` and ``box`` draw one shape per 8-connected component with more than
    ``min_area`` pixels (components in scan order, random numbers drawn in that order):

    * point: a random pixel of the component within half its shorter box side of its centroid
      (uniform angle and distance, first of ``max_retries`` draws inside the component, else the
      component pixel nearest the centroid), dilated to a disk of radius ``point_radius``;
    * scribble: a box around the centroid with sides scaled by U(0.5, 1.2) and IoU >= 0.5 with the
      component's box (first of ``max_retries`` draws; none qualifying, no stroke); its diagonal
      from a random corner, rows displaced by ``A sin(2 pi f t + phase)`` (A ~ U(10, 20) px,
      f ~ U(0.2, 1), phase ~ U(0, 2 pi), t in [0, 1] along the line), dilated by ``scribble_radius``;
    * box: the component's bounding box scaled about its centre by U(0.9, 1.1), filled.

    ``mask`` blurs the whole instance mask (Gaussian, sigma 2) and keeps pixels above the blurred
    image's mean: close to the mask with rounded corners, its edges shifted by a pixel or two
    depending on the mask's share of the image (no randomness, tiny components included).

    Returns an ``(H, W)`` bool array; point, scribble and box are empty when no component is large
    enough.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if kind == "mask":
        blurred = _ndimage().gaussian_filter(mask.astype(np.float64), sigma=2)
        return blurred > blurred.mean()
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown visual prompt kind {kind!r}; expected one of {PROMPT_KINDS}")
    prompt = np.zeros(mask.shape, dtype=bool)
    for component in _components(mask, min_area):
        if kind == "point":
            prompt[_point(component, rng, max_retries)] = True
        elif kind == "scribble":
            stroke = _scribble(component, mask.shape, rng, max_retries)
            if stroke is not None:
                prompt[stroke] = True
        else:
            prompt[_box(component, mask.shape, rng)] = True
    if kind == "point":
        return dilate_disk(prompt, point_radius)
    if kind == "scribble":
        return dilate_disk(prompt, scribble_radius)
    return prompt


def _synthesized(instance: Mask, kind: str, seed: int, annotation_id: int) -> np.ndarray:
    """Loader of a synthesised prompt: deterministic per ``(seed, annotation id, kind)``."""
    rng = np.random.default_rng([seed, annotation_id, PROMPT_KINDS.index(kind)])
    return synthesize_visual_prompts(instance.decode(), kind, rng)


def _dilated(prompt: Mask, radius: float) -> np.ndarray:
    return dilate_disk(prompt.decode(), radius)


# ------------------------------------------------------------------------------------ json helpers


def _rle_area(rle: Mapping) -> int:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed: runs alternate background / foreground
        return int(sum(counts[1::2]))
    from pycocotools import mask as mask_utils

    encoded = dict(rle, counts=counts.encode("ascii") if isinstance(counts, str) else counts)
    return int(mask_utils.area(encoded))


def _instance_mask(segmentation: Any, height: int, width: int, where: str) -> Mask | None:
    """A COCO instance ``segmentation`` (RLE or polygons) as one mask; None when no polygon is valid."""
    if isinstance(segmentation, Mapping) and "counts" in segmentation:
        return Mask(height, width, rle=dict(segmentation))
    if isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation):
        polygons = tuple(tuple(p) for p in segmentation if len(p) >= 6 and len(p) % 2 == 0)
        return Mask(height, width, polygons=polygons) if polygons else None
    raise ValueError(f"{where}: 'segmentation' must be an RLE dict or a list of polygons")


def _stored_prompts(
    annotation: Mapping, keys: Mapping[str, str], height: int, width: int, where: str
) -> dict[str, Mask]:
    """The non-empty RLE prompts of ``annotation`` under ``keys`` (kind -> json key)."""
    prompts = {}
    for kind, key in keys.items():
        rle = annotation.get(key)
        if rle is None:
            continue
        if not (isinstance(rle, Mapping) and "counts" in rle):
            raise ValueError(f"{where}: {key!r} must be an RLE dict")
        if _rle_area(rle) > 0:
            prompts[kind] = Mask(height, width, rle=dict(rle))
    return prompts


def _coco_categories(instances_json: PathLike) -> dict[int, str]:
    """COCO category id -> name, in id order."""
    data = load_json(instances_json)
    categories = as_list(field(data, "categories", str(instances_json)), "'categories'", str(instances_json))
    names = {}
    for index, category in enumerate(categories):
        where = f"{instances_json}: category {index}"
        names[int(field(category, "id", where))] = str(field(category, "name", where))
    return dict(sorted(names.items()))


# ------------------------------------------------------------------------------------------ COCO-VGD
def _vgd_layout_record(
    entry: Any, where: str, image_dir: PathLike, names: Mapping[int, str], *, task: str, source: str
) -> Record | None:
    """One entry of the COCO-VGD layout (also X-SAM's cached interactive json)."""
    height, width = (int(v) for v in field(entry, "image_size", where)[:2])
    segments = []
    for index, annotation in enumerate(as_list(field(entry, "annotations", where), "'annotations'", where)):
        at = (
            f"{where}: annotation {annotation.get('id', index) if isinstance(annotation, Mapping) else index}"
        )
        mask = _instance_mask(field(annotation, "segmentation", at), height, width, at)
        if mask is None:
            continue
        category_id = int(field(annotation, "category_id", at))
        stored = field(annotation, "visual_prompts", at)
        prompts = _stored_prompts(stored, _VGD_KEYS, height, width, f"{at}: visual_prompts")
        segments.append(_segment(mask, category_id, names, annotation, prompts, at))
    if not segments:
        return None
    return Record(
        task=task,
        image_path=Path(image_dir) / field(entry, "image_file", where),
        height=height,
        width=width,
        image_id=entry.get("image_id"),
        source=source,
        segments=segments,
        categories=[(name, True) for name in names.values()],
    )


def _segment(
    mask: Mask,
    category_id: int,
    names: Mapping[int, str],
    annotation: Mapping,
    prompts: dict[str, Mask],
    where: str,
) -> Segment:
    if names and category_id not in names:
        raise ValueError(f"{where}: category_id {category_id} is not in the category list")
    return Segment(
        mask,
        names.get(category_id, ""),
        category_id,
        is_thing=True,
        iscrowd=bool(annotation.get("iscrowd", 0)),
        visual_prompts=prompts,
    )


def _synthesized_records(
    instances_json: PathLike, image_dir: PathLike, names: Mapping[int, str], *, seed: int, source: str
) -> list[Record]:
    """Records over ``instances.json`` with lazily synthesised prompts (crowd instances skipped)."""
    data = load_json(instances_json)
    where = str(instances_json)
    annotations: dict[Any, list[Mapping]] = {}
    for annotation in as_list(field(data, "annotations", where), "'annotations'", where):
        annotations.setdefault(field(annotation, "image_id", f"{where}: annotation"), []).append(annotation)
    images = as_list(field(data, "images", where), "'images'", where)
    records = []
    for image in sorted(images, key=lambda item: field(item, "id", f"{where}: image")):
        at = f"{where}: image {image['id']}"
        height, width = int(field(image, "height", at)), int(field(image, "width", at))
        segments = []
        for index, annotation in enumerate(annotations.get(image["id"], [])):
            ann_at = f"{at}: annotation {annotation.get('id', index)}"
            if annotation.get("iscrowd", 0):
                continue
            mask = _instance_mask(field(annotation, "segmentation", ann_at), height, width, ann_at)
            if mask is None:
                continue
            annotation_id = int(annotation.get("id", index))
            prompts = {
                kind: Mask(height, width, loader=partial(_synthesized, mask, kind, seed, annotation_id))
                for kind in PROMPT_KINDS
            }
            segments.append(
                _segment(
                    mask, int(field(annotation, "category_id", ann_at)), names, annotation, prompts, ann_at
                )
            )
        if segments:
            records.append(
                Record(
                    task="vgd",
                    image_path=Path(image_dir) / field(image, "file_name", at),
                    height=height,
                    width=width,
                    image_id=image["id"],
                    source=source,
                    segments=segments,
                    categories=[(name, True) for name in names.values()],
                )
            )
    return records


def read_coco_vgd(
    vgd_json: PathLike | None,
    instances_json: PathLike,
    image_dir: PathLike,
    *,
    synthesize_missing: bool = True,
    seed: int = 0,
    source: str = "coco_vgd",
) -> list[Record]:
    """COCO-VGD: instances with point / scribble / box / mask prompts (``Record(task="vgd")``).

    ``vgd_json`` (e.g. ``coco_vgdseg_train.json``) is a list of ``{"image_file", "image_id",
    "image_size": [h, w], "image_info", "annotations": [COCO annotation + "bbox_mode" +
    "visual_prompts": {"point_visual_prompt", "scribble_visual_prompt", "box_visual_prompt",
    "mask_visual_prompt"}]}`` with every prompt an RLE (point and scribble already dilated).
    ``instances_json`` (the COCO ``instances_*.json`` it was made from) gives the category names
    and ``Record.categories`` (the 80 classes in id order).

    When ``vgd_json`` is None or missing and ``synthesize_missing`` is set, the records are built from
    ``instances_json`` instead (crowd instances skipped, images without instances skipped) and
    every prompt is synthesised lazily on decode, deterministically per ``(seed, annotation id,
    kind)``; such a prompt can be empty (instances with no component over 5 px).

    Instances whose stored prompts are all empty keep an empty ``visual_prompts`` dict; officially
    they are neither prompted nor segmented, so training and evaluation should skip them.
    """
    names = _coco_categories(instances_json)
    if vgd_json is None or not Path(vgd_json).is_file():
        if not synthesize_missing:
            raise FileNotFoundError(
                f"VGD prompt file not found: {vgd_json} (pass synthesize_missing=True to synthesise "
                f"the prompts from {instances_json})"
            )
        return _synthesized_records(instances_json, image_dir, names, seed=seed, source=source)
    data = as_list(load_json(vgd_json), "the top level", str(vgd_json))
    records = []
    for index, entry in enumerate(data):
        record = _vgd_layout_record(
            entry, f"{vgd_json}: entry {index}", image_dir, names, task="vgd", source=source
        )
        if record is not None:
            records.append(record)
    return records


# ---------------------------------------------------------------------------------- COCO-Interactive
def _psalm_record(
    entry: Mapping, where: str, image_dir: PathLike, names: Mapping[int, str], *, source: str
) -> Record | None:
    info = field(entry, "image_info", where)
    height, width = (
        int(field(info, "height", f"{where}: image_info")),
        int(field(info, "width", f"{where}: image_info")),
    )
    segments = []
    for index, annotation in enumerate(as_list(field(entry, "anns", where), "'anns'", where)):
        at = (
            f"{where}: annotation {annotation.get('id', index) if isinstance(annotation, Mapping) else index}"
        )
        mask = _instance_mask(field(annotation, "segmentation", at), height, width, at)
        prompts = _stored_prompts(annotation, _PSALM_KEYS, height, width, at)
        if mask is None or not prompts:
            continue
        for kind, radius in (("point", POINT_RADIUS), ("scribble", SCRIBBLE_RADIUS)):
            if kind in prompts:  # stored as single pixels / thin strokes; dilated as officially
                prompts[kind] = Mask(height, width, loader=partial(_dilated, prompts[kind], radius))
        segments.append(
            _segment(mask, int(field(annotation, "category_id", at)), names, annotation, prompts, at)
        )
    if not segments:
        return None
    file_name = entry.get("image") or field(info, "file_name", f"{where}: image_info")
    return Record(
        task="interactive",
        image_path=Path(image_dir) / file_name,
        height=height,
        width=width,
        image_id=info.get("id"),
        source=source,
        segments=segments,
        categories=[(name, True) for name in names.values()],
    )


def read_coco_interactive(
    json_path: PathLike,
    image_dir: PathLike,
    *,
    instances_json: PathLike | None = None,
    source: str = "coco_interactive",
) -> list[Record]:
    """COCO-Interactive (PSALM release, ``coco_interactive_val_psalm.json``), one record per image.

    Assumed structure (the one the official and PSALM loaders read): a list of ``{"image":
    file_name, "image_info": {"file_name", "height", "width", "id"}, "anns": [COCO annotation +
    "point_visual_prompt_mask", "scribble_visual_prompt_mask", "box_visual_prompt_mask",
    "mask_visual_prompt_mask"]}``, every prompt an RLE. Point prompts are stored as clicked pixels
    and scribbles as thin strokes: they are dilated on decode by 10 px and 5 px.
    Annotations with no non-empty prompt are dropped, and so are images left without annotations.

    Entries in the COCO-VGD layout (``"annotations"`` with ``"visual_prompts"``, e.g. the official
    cached ``intseg_val.json``, prompts already dilated) are read as by :func:`read_coco_vgd`.

    Category names come from ``instances_json`` when given (else ``Segment.category`` is ``""``;
    ``category_id`` is always set). Evaluation treats every segment as its own single-region
    sample.
    """
    names = _coco_categories(instances_json) if instances_json is not None else {}
    data = as_list(load_json(json_path), "the top level", str(json_path))
    records = []
    for index, entry in enumerate(data):
        where = f"{json_path}: entry {index}"
        if isinstance(entry, Mapping) and "anns" in entry:
            record = _psalm_record(entry, where, image_dir, names, source=source)
        elif isinstance(entry, Mapping) and "annotations" in entry:
            record = _vgd_layout_record(entry, where, image_dir, names, task="interactive", source=source)
        else:
            raise ValueError(f"{where}: expected an object with 'anns' (PSALM) or 'annotations' (VGD layout)")
        if record is not None:
            records.append(record)
    return records
