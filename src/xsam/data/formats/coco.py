"""Readers for the COCO annotation formats used by generic and open-vocabulary segmentation.

Three layouts, one reader each, all returning ``list[Record]`` with lazy masks:

* **panoptic** (:func:`read_coco_panoptic`): a JSON file with ``images`` ``{id, file_name, height,
  width}``, ``annotations`` ``{image_id, file_name, segments_info: [{id, category_id, iscrowd, …}]}``
  and ``categories`` ``{id, name, isthing}``, plus one RGB PNG per image whose pixels encode segment ids
  as ``R + 256·G + 256²·B`` (0 = unlabelled). COCO panoptic and the ADE20K panoptic files built by
  detectron2's / X-SAM's preparation scripts share this layout.
* **instances** (:func:`read_coco_instances`): a JSON file with ``images``, ``annotations`` ``{id,
  image_id, category_id, segmentation, iscrowd}`` (polygons, or RLE compressed or not) and
  ``categories`` ``{id, name}``; every category is a thing.
* **semantic** (:func:`read_semantic_pngs`): one single-channel label PNG per image whose pixels are
  class indices (plus an optional offset), with one value reserved for "ignore".

Images and annotations are linked the way each format links them: panoptic and instance annotations by
``image_id`` through the JSON's ``images`` table, semantic label PNGs by file-name stem.

Every ``Segment.mask`` is a :class:`~xsam.tasks.records.Mask` that decodes on demand; reading an index
never decodes a panoptic PNG or an RLE. Panoptic and semantic masks load through small picklable callables
(so records survive a ``DataLoader`` with worker processes) that share a per-process cache of the last
few decoded PNGs: decoding all segments of one image reads its PNG once, and memory stays bounded however
many records exist or however few of their segments a consumer decodes.

``Segment.category_id`` is the dataset's own category id (COCO's sparse 1…200, as evaluation files
expect) for the JSON formats and the class index for semantic PNGs; ``Record.categories`` lists the
classes in ascending id order as ``(name, is_thing)``, and ``Record.extra["category_ids"]`` the
matching ids. Category lists are shared between the records of one read: do not mutate them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from xsam.tasks.records import Mask, Record, Segment

READER_TASKS = ("generic", "open_vocab")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_PNG_CACHE_SIZE = 4  # a few images' worth: enough to decode one record's segments back to back


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids of an ``(..., 3)`` RGB array: ``R + 256·G + 256²·B``, as ``int64``."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (..., 3) RGB array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray | int) -> np.ndarray:
    """The inverse of :func:`rgb_to_id`: ids in ``[0, 256³)`` to an ``(..., 3)`` ``uint8`` RGB array."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"panoptic ids must lie in [0, {256**3}), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_coco_panoptic(
    annotation_json: str | Path,
    png_dir: str | Path,
    image_dir: str | Path,
    *,
    task: str = "generic",
    source: str = "coco_panoptic",
    check_files: bool = True,
) -> list[Record]:
    """One record per entry of the panoptic JSON's ``annotations``, in file order.

    Each ``segments_info`` entry becomes a :class:`Segment` whose mask is ``rgb_to_id(png) == id``,
    decoded on demand. Crowd segments are kept with ``iscrowd=True`` (training drops them, evaluation
    treats them as ignore regions). ``Record.extra["panoptic_png"]`` is the PNG's path.

    Args:
        annotation_json: the panoptic JSON (e.g. ``panoptic_val2017.json``).
        png_dir: folder of the panoptic PNGs named by ``annotations[i].file_name``.
        image_dir: folder of the images named by ``images[i].file_name``.
        task: ``"generic"`` or ``"open_vocab"`` (e.g. ADE20K read for open-vocabulary evaluation).
        source: the records' ``source`` tag.
        check_files: raise :class:`FileNotFoundError` naming the path when an image or PNG is missing;
            with ``False`` a missing PNG only fails when one of its masks is decoded.

    Raises:
        ValueError: a required key is missing, a category id is unknown, or ids repeat; the message names
            the JSON file and the offending entry.
    """
    annotation_json, png_dir, image_dir = Path(annotation_json), Path(png_dir), Path(image_dir)
    _check_task(task)
    data = _load_json(annotation_json)
    table = _CategoryTable.from_json(data, annotation_json, all_things=False)
    images = _index_images(data, annotation_json)
    records, seen = [], set()
    for index, annotation in enumerate(_list_field(data, "annotations", annotation_json, "the top level")):
        where = f"annotations[{index}]"
        image_id = _field(annotation, "image_id", annotation_json, where)
        image = _lookup_image(images, image_id, annotation_json, where)
        if image_id in seen:
            raise ValueError(f"{annotation_json}: {where} repeats image_id {image_id!r}")
        seen.add(image_id)
        png_path = png_dir / _field(annotation, "file_name", annotation_json, where)
        image_path = image_dir / image.file_name
        if check_files:
            _require_file(image_path, "image")
            _require_file(png_path, "panoptic PNG")
        segments_info = _list_field(annotation, "segments_info", annotation_json, where)
        records.append(
            Record(
                task=task,
                image_path=image_path,
                height=image.height,
                width=image.width,
                image_id=image_id,
                source=source,
                segments=_panoptic_segments(segments_info, png_path, image, table, annotation_json, where),
                categories=table.categories,
                extra={"panoptic_png": png_path, "category_ids": table.ids},
            )
        )
    return records


def read_coco_instances(
    annotation_json: str | Path,
    image_dir: str | Path,
    *,
    task: str = "generic",
    source: str = "coco_instances",
    check_files: bool = True,
) -> list[Record]:
    """One record per entry of the instances JSON's ``images`` (images without annotations included).

    Polygons become ``Mask(polygons=...)`` (polygons with fewer than three points are dropped, as
    detectron2 does, and an annotation left with none is skipped); RLE, compressed (``counts`` a string)
    or not (a list), becomes ``Mask(rle=...)``. All categories are things. ``Record.extra
    ["annotation_ids"]`` lists each segment's annotation id (``None`` where the JSON has none).

    Raises:
        ValueError: a required key is missing, a category or image id is unknown, a segmentation is
            malformed or its RLE size differs from the image's; the message names the JSON file and entry.
        FileNotFoundError: with ``check_files``, an image file is missing (the message is its path).
    """
    annotation_json, image_dir = Path(annotation_json), Path(image_dir)
    _check_task(task)
    data = _load_json(annotation_json)
    table = _CategoryTable.from_json(data, annotation_json, all_things=True)
    images = _index_images(data, annotation_json)
    per_image: dict[Any, list[tuple[Segment, Any]]] = {image_id: [] for image_id in images}
    for index, annotation in enumerate(_list_field(data, "annotations", annotation_json, "the top level")):
        where = f"annotations[{index}]"
        image = _lookup_image(
            images, _field(annotation, "image_id", annotation_json, where), annotation_json, where
        )
        segment = _instance_segment(annotation, image, table, annotation_json, where)
        if segment is not None:
            per_image[annotation["image_id"]].append((segment, annotation.get("id")))
    records = []
    for image_id, image in images.items():
        image_path = image_dir / image.file_name
        if check_files:
            _require_file(image_path, "image")
        pairs = per_image[image_id]
        records.append(
            Record(
                task=task,
                image_path=image_path,
                height=image.height,
                width=image.width,
                image_id=image_id,
                source=source,
                segments=[segment for segment, _ in pairs],
                categories=table.categories,
                extra={"annotation_ids": [ann_id for _, ann_id in pairs], "category_ids": table.ids},
            )
        )
    return records


def read_semantic_pngs(
    image_dir: str | Path,
    label_dir: str | Path,
    categories: Sequence[str | tuple[str, bool]],
    *,
    ignore_value: int = 255,
    label_offset: int = 0,
    task: str = "generic",
    source: str = "coco_semantic",
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    check_files: bool = True,
) -> list[Record]:
    """One record per label PNG in ``label_dir`` (sorted by name), paired with the same-stem image.

    A pixel ``v`` belongs to class ``v - label_offset`` (an index into ``categories``) unless
    ``v == ignore_value``; ignored pixels form ``Record.ignore_mask`` (``None`` when there are none). Each
    class present becomes one :class:`Segment` (``category_id`` = class index), in class order.

    Which classes are present is only known from the pixels, so reading decodes every label PNG once
    (keeping nothing); the masks themselves decode on demand. Typical settings:

    * Mask2Former's COCO ``panoptic_semseg_{train,val}2017`` and detectron2's ADE20K
      ``annotations_detectron2``: the defaults (classes ``0…C-1``, 255 ignore). The latter is the raw
      ADE20K label minus one in ``uint8``, which is why it is described as "labels −1, 255 ignore".
    * raw ``ADEChallengeData2016/annotations`` (``0`` = unlabelled, classes ``1…150``):
      ``label_offset=1, ignore_value=0``.

    Args:
        image_dir: folder of the images; an image pairs with ``<stem>.png`` by its stem.
        label_dir: folder of the label PNGs (single channel, ``L``/``P``/``I`` modes).
        categories: class names in index order; a plain string is a stuff class (``is_thing=False``),
            a ``(name, is_thing)`` pair says so explicitly.
        ignore_value: the raw pixel value that marks ignored pixels.
        label_offset: subtracted from raw pixel values to get class indices.
        image_suffixes: image extensions tried, in order, when pairing.
        check_files: raise :class:`FileNotFoundError` when a label PNG has no image; without it the
            image path falls back to ``<stem><image_suffixes[0]>``.

    Raises:
        ValueError: a PNG has more than one channel or a value that is neither ``ignore_value`` nor a
            class index; the message names the PNG and the values.
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    _check_task(task)
    if isinstance(categories, str):
        raise TypeError("categories must be a sequence of names, not one string")
    category_list = [
        (name, False) if isinstance(name, str) else (str(name[0]), bool(name[1])) for name in categories
    ]
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_dir}")
    suffixes = tuple(suffix.lower() for suffix in image_suffixes)
    images_by_stem = _images_by_stem(image_dir, suffixes)
    records = []
    for label_path in sorted(label_dir.glob("*.png")):
        image_path = images_by_stem.get(label_path.stem)
        if image_path is None:
            image_path = image_dir / f"{label_path.stem}{suffixes[0]}"
            if check_files:
                raise FileNotFoundError(f"image not found for {label_path}: {image_path} (tried {suffixes})")
        records.append(
            _semantic_record(label_path, image_path, category_list, ignore_value, label_offset, task, source)
        )
    return records


# --- lazy mask loaders ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=_PNG_CACHE_SIZE)
def _panoptic_ids(png_path: Path) -> np.ndarray:
    """The segment-id map of one panoptic PNG (read-only ``(H, W)`` int64; cached per process)."""
    rgb = _read_png(png_path)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"{png_path}: a panoptic PNG must be RGB, got an array of shape {rgb.shape}")
    ids = rgb_to_id(rgb[..., :3])
    ids.setflags(write=False)
    return ids


@functools.lru_cache(maxsize=_PNG_CACHE_SIZE)
def _label_image(png_path: Path) -> np.ndarray:
    """The raw pixel values of one single-channel label PNG (read-only ``(H, W)``; cached per process)."""
    labels = _read_png(png_path)
    if labels.ndim != 2:
        raise ValueError(f"{png_path}: a semantic label PNG must have one channel, got shape {labels.shape}")
    labels.setflags(write=False)
    return labels


def _read_png(path: Path) -> np.ndarray:
    """Decode an image file to a fresh numpy array (palette images keep their indices)."""
    with Image.open(path) as image:
        return np.array(image)


@dataclass(frozen=True)
class _PanopticSegmentLoader:
    """Loads one segment of a panoptic PNG: ``rgb_to_id(png) == segment_id``."""

    png_path: Path
    segment_id: int
    height: int
    width: int

    def __call__(self) -> np.ndarray:
        ids = _panoptic_ids(self.png_path)
        if ids.shape != (self.height, self.width):
            raise ValueError(
                f"{self.png_path}: PNG is {ids.shape[1]}x{ids.shape[0]} (WxH), "
                f"the JSON says {self.width}x{self.height}"
            )
        return ids == self.segment_id


@dataclass(frozen=True)
class _LabelValueLoader:
    """Loads the pixels of one raw value of a label PNG (a class, or the ignore value)."""

    png_path: Path
    value: int

    def __call__(self) -> np.ndarray:
        return _label_image(self.png_path) == self.value


# --- panoptic / instances helpers ----------------------------------------------------------------


class _ImageEntry(NamedTuple):
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class _CategoryTable:
    """A JSON's ``categories``: id -> (name, is_thing), and the ``(name, is_thing)`` list in id order."""

    by_id: dict[Any, tuple[str, bool]]
    categories: list[tuple[str, bool]]
    ids: tuple[Any, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path, *, all_things: bool) -> _CategoryTable:
        by_id: dict[Any, tuple[str, bool]] = {}
        for index, category in enumerate(_list_field(data, "categories", path, "the top level")):
            where = f"categories[{index}]"
            category_id = _field(category, "id", path, where)
            if category_id in by_id:
                raise ValueError(f"{path}: {where} repeats category id {category_id!r}")
            name = str(_field(category, "name", path, where))
            is_thing = True if all_things else bool(_field(category, "isthing", path, where))
            by_id[category_id] = (name, is_thing)
        ids = tuple(sorted(by_id))
        return cls(by_id, [by_id[category_id] for category_id in ids], ids)

    def lookup(self, category_id: Any, path: Path, where: str) -> tuple[str, bool]:
        if category_id not in self.by_id:
            raise ValueError(f"{path}: {where} has category_id {category_id!r}, which is not in 'categories'")
        return self.by_id[category_id]


def _panoptic_segments(
    segments_info: Sequence[Any],
    png_path: Path,
    image: _ImageEntry,
    table: _CategoryTable,
    path: Path,
    where: str,
) -> list[Segment]:
    segments, seen = [], set()
    for index, info in enumerate(segments_info):
        info_where = f"{where}.segments_info[{index}]"
        segment_id = _field(info, "id", path, info_where)
        if not isinstance(segment_id, int) or not 0 < segment_id < 256**3:
            raise ValueError(f"{path}: {info_where} has id {segment_id!r}; expected an int in [1, 256³)")
        if segment_id in seen:
            raise ValueError(f"{path}: {info_where} repeats segment id {segment_id}")
        seen.add(segment_id)
        category_id = _field(info, "category_id", path, info_where)
        name, is_thing = table.lookup(category_id, path, info_where)
        loader = _PanopticSegmentLoader(png_path, segment_id, image.height, image.width)
        segments.append(
            Segment(
                mask=Mask(image.height, image.width, loader=loader),
                category=name,
                category_id=category_id,
                is_thing=is_thing,
                iscrowd=bool(info.get("iscrowd", 0)),
            )
        )
    return segments


def _instance_segment(
    annotation: Mapping[str, Any], image: _ImageEntry, table: _CategoryTable, path: Path, where: str
) -> Segment | None:
    category_id = _field(annotation, "category_id", path, where)
    name, _ = table.lookup(category_id, path, where)
    mask = _instance_mask(_field(annotation, "segmentation", path, where), image, path, where)
    if mask is None:
        return None
    return Segment(
        mask=mask,
        category=name,
        category_id=category_id,
        is_thing=True,
        iscrowd=bool(annotation.get("iscrowd", 0)),
    )


def _instance_mask(segmentation: Any, image: _ImageEntry, path: Path, where: str) -> Mask | None:
    """A COCO ``segmentation`` as a lazy mask; ``None`` when no polygon has three points."""
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) % 2:
                raise ValueError(
                    f"{path}: {where}.segmentation has a polygon that is not [x0, y0, x1, y1, …]"
                )
            if len(polygon) >= 6:
                polygons.append(tuple(float(value) for value in polygon))
        return Mask(image.height, image.width, polygons=tuple(polygons)) if polygons else None
    if isinstance(segmentation, Mapping):
        size = list(_field(segmentation, "size", path, f"{where}.segmentation"))
        counts = _field(segmentation, "counts", path, f"{where}.segmentation")
        if size != [image.height, image.width]:
            raise ValueError(
                f"{path}: {where}.segmentation has size {size}, the image is {[image.height, image.width]}"
            )
        if not isinstance(counts, (str, list)):
            raise ValueError(f"{path}: {where}.segmentation.counts must be a string or a list of run lengths")
        return Mask(image.height, image.width, rle={"size": size, "counts": counts})
    raise ValueError(f"{path}: {where}.segmentation must be a list of polygons or an RLE dict")


def _index_images(data: Mapping[str, Any], path: Path) -> dict[Any, _ImageEntry]:
    images: dict[Any, _ImageEntry] = {}
    for index, image in enumerate(_list_field(data, "images", path, "the top level")):
        where = f"images[{index}]"
        image_id = _field(image, "id", path, where)
        if image_id in images:
            raise ValueError(f"{path}: {where} repeats image id {image_id!r}")
        images[image_id] = _ImageEntry(
            str(_field(image, "file_name", path, where)),
            int(_field(image, "height", path, where)),
            int(_field(image, "width", path, where)),
        )
    return images


def _lookup_image(images: Mapping[Any, _ImageEntry], image_id: Any, path: Path, where: str) -> _ImageEntry:
    if image_id not in images:
        raise ValueError(f"{path}: {where} has image_id {image_id!r}, which is not in 'images'")
    return images[image_id]


# --- semantic helpers ----------------------------------------------------------------------------


def _images_by_stem(image_dir: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Image files of ``image_dir`` by stem; the earliest suffix in ``suffixes`` wins a tie."""
    if not image_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in image_dir.iterdir():
        suffix = path.suffix.lower()
        if suffix not in suffixes or not path.is_file():
            continue
        current = found.get(path.stem)
        if current is None or suffixes.index(suffix) < suffixes.index(current.suffix.lower()):
            found[path.stem] = path
    return found


def _semantic_record(
    label_path: Path,
    image_path: Path,
    categories: list[tuple[str, bool]],
    ignore_value: int,
    label_offset: int,
    task: str,
    source: str,
) -> Record:
    labels = _label_image(label_path)
    values = [int(value) for value in np.unique(labels)]
    height, width = labels.shape
    segments, has_ignore = [], False
    for value in values:
        if value == ignore_value:
            has_ignore = True
            continue
        index = value - label_offset
        if not 0 <= index < len(categories):
            raise ValueError(
                f"{label_path}: pixel value {value} is class {index} (offset {label_offset}), outside "
                f"0…{len(categories) - 1}, and is not the ignore value {ignore_value}"
            )
        name, is_thing = categories[index]
        loader = _LabelValueLoader(label_path, value)
        segments.append(
            Segment(Mask(height, width, loader=loader), name, category_id=index, is_thing=is_thing)
        )
    ignore_mask = (
        Mask(height, width, loader=_LabelValueLoader(label_path, ignore_value)) if has_ignore else None
    )
    return Record(
        task=task,
        image_path=image_path,
        height=height,
        width=width,
        image_id=label_path.stem,
        source=source,
        segments=segments,
        categories=categories,
        ignore_mask=ignore_mask,
        extra={"label_png": label_path},
    )


# --- shared helpers ------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in READER_TASKS:
        raise ValueError(f"task must be one of {READER_TASKS}, got {task!r}")


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open(encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _field(entry: Any, key: str, path: Path, where: str) -> Any:
    """``entry[key]``, or a ValueError naming the file, the entry and the missing key."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{path}: {where} must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{path}: {where} has no {key!r} key")
    return entry[key]


def _list_field(entry: Any, key: str, path: Path, where: str) -> list[Any]:
    value = _field(entry, key, path, where)
    if not isinstance(value, list):
        raise ValueError(f"{path}: {where} {key!r} must be a list, got {type(value).__name__}")
    return value


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
