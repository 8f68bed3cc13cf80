"""Grounded conversation generation (GCG) readers: GranD-f, PSG-GCG, RefCOCOg-GCG, Flickr30k-GCG,
and the GranD-f val/test ground truth used by the GCG evaluation.

The training readers return ``Record(task="gcg")`` with ``caption`` and ``phrases`` (character
spans ``[start, end)`` into ``caption``, each with the mask(s) it grounds; several masks mean their
union). They normalise the data as the official loader does:

* the caption is stripped of surrounding double quotes and whitespace and lower-cased; so is every
  phrase text that is looked up in it;
* a phrase is kept only if its (normalised) text occurs in the caption (GranD-f, PSG, RefCOCOg);
* phrases are sorted by start (ties keep file order) and overlapping spans are removed greedily:
  walking in that order, a span is kept only if it starts **after** the end of the last kept span,
  so the earlier-starting span wins and a span that starts exactly where the previous one ends is
  dropped too (the official rule, reproduced). Empty spans and spans outside the caption are
  dropped first;
* an image left without any phrase is skipped.

Image sizes come from the annotation (``height`` / ``width``), else from the ``size`` of the first
RLE mask, else from the image file's header.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xsam.data.formats.json_fields import as_list, field, load_json
from xsam.tasks.records import Mask, Phrase, Record, Segment

PathLike = str | os.PathLike
TASK = "gcg"
FLICKR_MIN_WORDS = 3
"""Flickr30k-GCG captions with fewer words (split on single spaces) are skipped, as officially."""


# ---------------------------------------------------------------------------------- shared helpers


def _normalize(text: str) -> str:
    """The official caption / phrase normalisation."""
    return text.strip('"').strip().lower()


def _is_rle(value: Any) -> bool:
    return isinstance(value, Mapping) and "counts" in value and "size" in value


def segmentation_masks(segmentation: Any, height: int, width: int, *, where: str = "") -> list[Mask]:
    """COCO ``segmentation`` -> lazy masks.

    Accepts one RLE dict (one mask), a list of RLE dicts (one mask each), or a list of polygons
    (flat ``[x0, y0, x1, y1, ...]`` lists; together one mask). Polygons with fewer than three
    points are ignored. Raises ValueError (prefixed with ``where``) for anything else.
    """
    if _is_rle(segmentation):
        return [Mask(height, width, rle=dict(segmentation))]
    if isinstance(segmentation, list):
        if all(_is_rle(item) for item in segmentation):
            return [Mask(height, width, rle=dict(item)) for item in segmentation]
        if all(isinstance(item, list) for item in segmentation):
            polygons = tuple(tuple(p) for p in segmentation if len(p) >= 6 and len(p) % 2 == 0)
            return [Mask(height, width, polygons=polygons)] if polygons else []
    raise ValueError(f"{where}: unsupported segmentation (expected an RLE dict, RLE list or polygons)")


def _image_size(entry: Mapping, rles: Sequence[Any], image_path: Path, where: str) -> tuple[int, int]:
    """``(height, width)`` from the entry, else the first RLE's ``size``, else the image header."""
    if entry.get("height") is not None and entry.get("width") is not None:
        return int(entry["height"]), int(entry["width"])
    for rle in rles:
        if _is_rle(rle):
            return int(rle["size"][0]), int(rle["size"][1])
    try:
        from PIL import Image

        with Image.open(image_path) as image:
            width, height = image.size
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"{where}: no height/width in the annotation and the image {image_path} cannot be read"
        ) from error
    return int(height), int(width)


# -------------------------------------------------------------------------------------- phrases
def remove_overlapping_phrases(phrases: Sequence[Phrase], caption_length: int) -> list[Phrase]:
    """Sort by start and drop overlapping spans with the official greedy rule (module docstring).

    Spans that are empty or reach outside ``[0, caption_length]`` are dropped before the sweep.
    """
    valid = [p for p in phrases if 0 <= p.start < p.end <= caption_length]
    kept: list[Phrase] = []
    for phrase in sorted(valid, key=lambda p: p.start):
        if not kept or phrase.start > kept[-1].end:
            kept.append(phrase)
    return kept


def _record(
    caption: str,
    phrases: list[Phrase],
    *,
    image_path: Path,
    size: tuple[int, int],
    image_id: int | str | None,
    source: str,
) -> Record | None:
    phrases = remove_overlapping_phrases(phrases, len(caption))
    if not phrases:
        return None
    return Record(
        task=TASK,
        image_path=image_path,
        height=size[0],
        width=size[1],
        image_id=image_id,
        source=source,
        caption=caption,
        phrases=phrases,
    )


# ---------------------------------------------------------------------------------------- readers
def read_grandf(json_path: PathLike, image_dir: PathLike, *, source: str = "grandf") -> list[Record]:
    """GranD-f (and PSG-GCG, same format: pass ``source="psg"``).

    The file is a list of ``{"image_id", "file_name", "caption", "groundings": {phrase:
    {"token_positives": [start, end], "rle_masks": [RLE, ...]}}}``; ``height`` / ``width`` are
    optional. Each grounding becomes one phrase whose masks are its RLEs.
    """
    data = as_list(load_json(json_path), "the top level", str(json_path))
    records = []
    for index, entry in enumerate(data):
        where = f"{json_path}: entry {index}"
        caption = _normalize(field(entry, "caption", where))
        groundings = field(entry, "groundings", where)
        if not isinstance(groundings, Mapping):
            raise ValueError(f"{where}: 'groundings' must be an object mapping phrase -> grounding")
        parsed = [
            (text, *_grounding(grounding, f"{where}: grounding {text!r}"))
            for text, grounding in groundings.items()
        ]
        image_path = Path(image_dir) / field(entry, "file_name", where)
        size = _image_size(entry, [rle for *_, rles in parsed for rle in rles], image_path, where)
        phrases = [
            Phrase(start, end, segmentation_masks(rles, *size, where=f"{where}: grounding {text!r}"))
            for text, start, end, rles in parsed
            if _normalize(text) in caption
        ]
        record = _record(
            caption, phrases, image_path=image_path, size=size, image_id=entry.get("image_id"), source=source
        )
        if record is not None:
            records.append(record)
    return records


def _grounding(grounding: Any, where: str) -> tuple[int, int, list]:
    """``(start, end, rle_masks)`` of one GranD-f grounding."""
    span = as_list(field(grounding, "token_positives", where), "'token_positives'", where)
    if span and isinstance(span[0], list):  # tolerate [[start, end]] as in Flickr's tokens_positive
        span = span[0]
    if len(span) < 2:
        raise ValueError(f"{where}: 'token_positives' must be [start, end], got {span}")
    return int(span[0]), int(span[1]), as_list(field(grounding, "rle_masks", where), "'rle_masks'", where)


def read_refcocog_gcg(
    json_path: PathLike, image_dir: PathLike, *, source: str = "refcocog_gcg"
) -> list[Record]:
    """RefCOCOg-GCG: a list of single-key dicts ``{key: {"img_file_name", "caption", "refs":
    [{"sentence", "segmentation"}, ...]}}``.

    The image file is the value's ``img_file_name`` (the key when that is absent); ``image_id`` is
    the value's ``image_id`` if present, else the number of records before it (as officially). Each ref's
    sentence is located by string search: its **first** occurrence in the caption gives the span;
    refs whose sentence does not occur are dropped. ``segmentation`` is COCO polygons (one mask)
    or RLE.
    """
    data = as_list(load_json(json_path), "the top level", str(json_path))
    records = []
    for index, wrapper in enumerate(data):
        where = f"{json_path}: entry {index}"
        if not isinstance(wrapper, Mapping) or len(wrapper) != 1:
            raise ValueError(f"{where}: expected a single-key object {{key: annotation}}")
        ((key, entry),) = wrapper.items()
        caption = _normalize(field(entry, "caption", where))
        image_path = Path(image_dir) / entry.get("img_file_name", key)
        refs = as_list(field(entry, "refs", where), "'refs'", where)
        located = []  # (start, end, segmentation, where) of the refs found in the caption
        for ref_index, ref in enumerate(refs):
            at = f"{where}: ref {ref_index}"
            sentence = _normalize(field(ref, "sentence", at))
            start = caption.find(sentence) if sentence else -1
            if start >= 0:
                located.append((start, start + len(sentence), field(ref, "segmentation", at), at))
        if not located:
            continue
        size = _image_size(entry, [seg for _, _, seg, _ in located if _is_rle(seg)], image_path, where)
        phrases = [Phrase(s, e, segmentation_masks(seg, *size, where=at)) for s, e, seg, at in located]
        image_id = entry.get("image_id", len(records))
        record = _record(caption, phrases, image_path=image_path, size=size, image_id=image_id, source=source)
        if record is not None:
            records.append(record)
    return records


def _coco_index(data: Any, path: PathLike) -> tuple[list[Mapping], dict[Any, list[Mapping]]]:
    """``(images, annotations grouped by image id)`` of a COCO-style json, in file order."""
    where = str(path)
    images = as_list(field(data, "images", where), "'images'", where)
    annotations = as_list(field(data, "annotations", where), "'annotations'", where)
    by_image: dict[Any, list[Mapping]] = {}
    for index, annotation in enumerate(annotations):
        image_id = field(annotation, "image_id", f"{where}: annotation {index}")
        by_image.setdefault(image_id, []).append(annotation)
    return images, by_image


def read_flickr_gcg(
    json_path: PathLike,
    image_dir: PathLike,
    *,
    source: str = "flickr_gcg",
    min_words: int = FLICKR_MIN_WORDS,
) -> list[Record]:
    """Flickr30k-GCG: COCO-style json whose images carry ``caption`` and whose annotations carry
    ``tokens_positive`` (``[[start, end], ...]``, the first span is used) and ``sam_mask`` (RLE).

    Images whose caption has fewer than ``min_words`` words, or no annotation, are skipped; the
    phrase text is the caption slice (not checked against anything). Records follow image-id order.
    """
    images, by_image = _coco_index(load_json(json_path), json_path)
    records = []
    for image in sorted(images, key=lambda item: field(item, "id", f"{json_path}: image")):
        where = f"{json_path}: image {image['id']}"
        caption = _normalize(field(image, "caption", where))
        annotations = by_image.get(image["id"], [])
        if len(caption.split(" ")) < min_words or not annotations:
            continue
        image_path = Path(image_dir) / field(image, "file_name", where)
        sam_masks = [field(a, "sam_mask", f"{where}: annotation {a.get('id')}") for a in annotations]
        size = _image_size(image, sam_masks, image_path, where)
        phrases = []
        for annotation, sam_mask in zip(annotations, sam_masks, strict=True):
            at = f"{where}: annotation {annotation.get('id')}"
            spans = as_list(field(annotation, "tokens_positive", at), "'tokens_positive'", at)
            if not spans:
                raise ValueError(f"{at}: 'tokens_positive' is empty")
            start, end = spans[0][:2]
            phrases.append(Phrase(int(start), int(end), segmentation_masks(sam_mask, *size, where=at)))
        record = _record(
            caption, phrases, image_path=image_path, size=size, image_id=image["id"], source=source
        )
        if record is not None:
            records.append(record)
    return records


def read_gcg_eval(
    mask_gt_json: PathLike,
    caption_gt_json: PathLike,
    image_dir: PathLike,
    *,
    source: str = "grandf_eval",
) -> list[Record]:
    """GranD-f val / test ground truth (``{val,test}_gcg_coco_mask_gt.json`` + ``..._caption_gt.json``).

    Both files are COCO-style with string image ids equal to the image file stems. One record per
    image of the mask GT, in file order: the image is ``file_name`` when given, else
    ``<id>.jpg``; ``caption`` is the caption GT's caption, unmodified (the metrics compare against
    it); ``segments`` are the GT masks (one per mask annotation, category ``"object"`` unless the
    file names its categories); ``extra["labels"]`` the caption GT's phrase list (used only by the
    disabled recall metric). ``phrases`` stay empty: the GT ties masks to images, not to spans.

    Raises ValueError when an image of the mask GT has no caption.
    """
    mask_data = load_json(mask_gt_json)
    mask_images, masks_by_image = _coco_index(mask_data, mask_gt_json)
    _, captions_by_image = _coco_index(load_json(caption_gt_json), caption_gt_json)
    category_names = {
        c["id"]: c["name"]
        for c in mask_data.get("categories") or []
        if isinstance(c, Mapping) and "id" in c and "name" in c
    }
    records = []
    for image in mask_images:
        image_id = field(image, "id", f"{mask_gt_json}: image")
        where = f"{mask_gt_json}: image {image_id!r}"
        if not captions_by_image.get(image_id):
            raise ValueError(f"{where} has no caption in {caption_gt_json}")
        caption_annotation = captions_by_image[image_id][0]
        image_path = Path(image_dir) / image.get("file_name", f"{image_id}.jpg")
        annotations = masks_by_image.get(image_id, [])
        rles = [field(a, "segmentation", f"{where}: annotation {a.get('id')}") for a in annotations]
        height, width = _image_size(image, rles, image_path, where)
        segments = []
        for annotation, rle in zip(annotations, rles, strict=True):
            at = f"{where}: annotation {annotation.get('id')}"
            category_id = annotation.get("category_id", 1)
            for mask in segmentation_masks(rle, height, width, where=at):
                segments.append(Segment(mask, category_names.get(category_id, "object"), category_id))
        records.append(
            Record(
                task=TASK,
                image_path=image_path,
                height=height,
                width=width,
                image_id=image_id,
                source=source,
                caption=field(caption_annotation, "caption", f"{caption_gt_json}: image {image_id!r}"),
                segments=segments,
                extra={"labels": list(caption_annotation.get("labels", []))},
            )
        )
    return records
