"""Reader for LISA's ReasonSeg (reasoning segmentation) -> reasoning records.

A split folder (``reaseg_data/lisa/{train,val,test}``) holds ``<name>.jpg`` images, each with a LabelMe-style
``<name>.json``::

    {"text": ["query", ...], "is_sentence": true,
     "shapes": [{"label": "target", "points": [[x, y], ...], "shape_type": "polygon"}, ...]}

Every query of an image denotes the same target. The ground truth is painted the way LISA's
``get_mask_from_json`` (and X-SAM's ``ReaSegDataset``) paints it:

* shapes labelled ``"flag"`` (deprecated marks) are skipped;
* every other shape is a polygon (``shape_type`` is not consulted), rasterised exactly as OpenCV's
  ``cv2.polylines`` + ``cv2.fillPoly`` do on ``int32``-truncated vertices (:func:`rasterize_polygon`;
  OpenCV itself is not needed);
* the polygons are painted **largest first** (area = pixel count of that rasterisation, ties in file
  order) into one label map, so a smaller polygon overwrites the larger ones it overlaps: an "ignore"
  hole cut into a target stays ignored, and a small target drawn inside an ignore region stays target;
* labels containing ``"ignore"`` paint the ignore value, all others the target value.

One record per image (task ``"reasoning"``) with one :class:`~xsam.tasks.records.Expression` per query,
all sharing the target mask, ``is_sentence`` from the JSON (default ``False``) and the explanation of
LISA's ``explanatory/train.json`` (a list of ``{"image": file name, "outputs": text}``) when given.
``Record.ignore_mask`` holds the ignore pixels (``None`` when there are none). Training asks all queries
of an image in one multi-turn conversation; evaluation asks each separately: :func:`split_queries`.

Masks are stored as COCO RLE (painting needs the whole label map, so it happens once, at read time).
Image sizes are read from the JPEG header without EXIF rotation, as X-SAM does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xsam.tasks.records import Expression, Mask, Record

TARGET_VALUE = 1
IGNORE_VALUE = 255
QUERY_TYPES = ("all", "sentence", "phrase")
FILL_RULES = ("opencv>=4.11", "opencv<4.11")
"""OpenCV changed ``fillPoly``'s span rounding in 4.11, which moves polygon borders by a pixel here and
there: ``"opencv<4.11"`` reproduces LISA's ground truth (LISA pins ``opencv_python==4.8.0.74``),
``"opencv>=4.11"`` (the default) what an environment installed since 2025, as X-SAM's unpinned one most
likely was, computes."""

_SHIFT = 16  # OpenCV's fixed-point fraction bits for polygon edges (XY_SHIFT)


def read_reasonseg(
    split_dir: str | Path,
    *,
    explanatory_json: str | Path | None = None,
    query_type: str = "all",
    skip_empty_targets: bool = True,
    fill_rule: str = FILL_RULES[0],
    source: str = "reasonseg",
) -> list[Record]:
    """Reasoning records of one ReasonSeg split folder, ordered by image file name.

    Args:
        split_dir: folder of ``*.jpg`` images and their same-name ``.json`` annotations.
        explanatory_json: LISA's explanatory JSON; its ``outputs`` become the expressions' ``explanation``
            (images it does not list get ``None``). An entry's ``query``, when present, is kept in
            ``extra["explanatory_query"]``.
        query_type: ``"sentence"`` keeps images whose queries are long sentences (``is_sentence``),
            ``"phrase"`` the others, ``"all"`` both (the test "long" / "short" / "all" splits).
        skip_empty_targets: drop images whose painted target is empty, as X-SAM's reader does.
        fill_rule: which OpenCV's polygon filling to reproduce, one of :data:`FILL_RULES`.
        source: the records' ``source`` tag.

    ``image_id`` is the image file name; ``extra`` has ``split`` (the folder name) and ``annotation_json``.

    Raises:
        FileNotFoundError: ``split_dir``, an image's ``.json`` or ``explanatory_json`` is missing (the
            message names the path).
        ValueError: no ``*.jpg`` in ``split_dir``, an unknown ``query_type``, or a malformed annotation
            (the message names the file).
    """
    if query_type not in QUERY_TYPES:
        raise ValueError(f"query_type must be one of {QUERY_TYPES}, got {query_type!r}")
    _is_legacy(fill_rule)  # fail on a bad fill_rule before reading anything
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"ReasonSeg split folder not found: {split_dir}")
    image_paths = sorted(path for path in split_dir.iterdir() if path.suffix == ".jpg" and path.is_file())
    if not image_paths:
        raise ValueError(f"no *.jpg images in {split_dir}")
    explanations = _load_explanations(Path(explanatory_json)) if explanatory_json is not None else {}

    records = []
    for image_path in image_paths:
        record, target_is_empty = _read_image(
            image_path, explanations.get(image_path.name), source, fill_rule
        )
        if skip_empty_targets and target_is_empty:
            continue
        is_sentence = record.expressions[0].is_sentence if record.expressions else False
        if query_type == "all" or is_sentence == (query_type == "sentence"):
            records.append(record)
    return records


def split_queries(records: Sequence[Record]) -> list[Record]:
    """One record per query, for evaluation: each keeps its image's target and ignore masks, and
    ``extra["query_index"]`` says which query of the image it is."""
    return [
        dataclasses.replace(record, expressions=[expression], extra=dict(record.extra, query_index=index))
        for record in records
        for index, expression in enumerate(record.expressions)
    ]


def reasonseg_label_map(
    shapes: Sequence[dict[str, Any]], height: int, width: int, *, fill_rule: str = FILL_RULES[0]
) -> np.ndarray:
    """The ``(H, W)`` ``uint8`` label map of one image's ``shapes``: 0 background,
    :data:`TARGET_VALUE` target, :data:`IGNORE_VALUE` ignore (see the module docstring for the rules)."""
    painted = []
    for index, shape in enumerate(shapes):
        label = str(shape["label"]).lower()
        if label == "flag":
            continue
        patch = _PolygonPatch.rasterize(shape["points"], height, width, fill_rule=fill_rule)
        painted.append((patch, IGNORE_VALUE if "ignore" in label else TARGET_VALUE, index))
    painted.sort(key=lambda item: item[0].area, reverse=True)  # stable: equal areas keep file order
    labels = np.zeros((height, width), dtype=np.uint8)
    for patch, value, _ in painted:
        patch.paint(labels, value)
    return labels


def rasterize_polygon(
    points: Sequence[Sequence[float]], height: int, width: int, *, fill_rule: str = FILL_RULES[0]
) -> np.ndarray:
    """The ``(H, W)`` bool mask OpenCV draws for ``points`` (``[[x, y], ...]``, any float) with
    ``cv2.polylines(m, [p], True, 1, 1)`` + ``cv2.fillPoly(m, [p], 1)``, ``p = np.int32(points)``.

    Vertices are truncated toward zero; each edge is an 8-connected Bresenham line clipped to the image
    like OpenCV's ``clipLine``; the interior is OpenCV's even-odd scanline fill in 16.16 fixed point, with
    the span rounding of the OpenCV named by ``fill_rule`` (:data:`FILL_RULES`). Checked pixel for pixel
    against OpenCV 4.8, 4.9 and 4.10 (``"opencv<4.11"``) and 4.11, 4.12 and 5.0 (``"opencv>=4.11"``) on
    thousands of random polygons, inside and partly outside the image.
    """
    mask = np.zeros((height, width), dtype=bool)
    _PolygonPatch.rasterize(points, height, width, fill_rule=fill_rule).paint(mask, True)
    return mask


# --- reading -------------------------------------------------------------------------------------


def _read_image(
    image_path: Path, explanation: dict[str, str] | None, source: str, fill_rule: str
) -> tuple[Record, bool]:
    """The image's record and whether its painted target is empty."""
    json_path = image_path.with_suffix(".json")
    annotation = _load_annotation(json_path)
    with Image.open(image_path) as image:
        width, height = image.size
    try:
        labels = reasonseg_label_map(annotation["shapes"], height, width, fill_rule=fill_rule)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{json_path}: malformed shape ({error!r})") from error
    target, ignore = labels == TARGET_VALUE, labels == IGNORE_VALUE
    text = explanation["outputs"] if explanation else None
    target_mask = _rle_mask(target)
    expressions = [
        Expression(query, [target_mask], is_sentence=annotation["is_sentence"], explanation=text)
        for query in annotation["text"]
    ]
    extra: dict[str, Any] = {"split": image_path.parent.name, "annotation_json": json_path}
    if explanation and "query" in explanation:
        extra["explanatory_query"] = explanation["query"]
    record = Record(
        task="reasoning",
        image_path=image_path,
        height=height,
        width=width,
        image_id=image_path.name,
        source=source,
        expressions=expressions,
        ignore_mask=_rle_mask(ignore) if ignore.any() else None,
        extra=extra,
    )
    return record, not target.any()


def _load_annotation(path: Path) -> dict[str, Any]:
    """The per-image JSON; files that are not UTF-8 are read as cp1252, as LISA's loader does."""
    if not path.is_file():
        raise FileNotFoundError(f"ReasonSeg annotation not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or "text" not in data or "shapes" not in data:
        raise ValueError(f"{path}: expected an object with 'text' and 'shapes'")
    queries = [data["text"]] if isinstance(data["text"], str) else data["text"]
    if not isinstance(queries, list) or not all(isinstance(query, str) for query in queries):
        raise ValueError(f"{path}: 'text' must be a list of strings")
    if not isinstance(data["shapes"], list):
        raise ValueError(f"{path}: 'shapes' must be a list")
    return {"text": queries, "shapes": data["shapes"], "is_sentence": bool(data.get("is_sentence", False))}


def _load_explanations(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"ReasonSeg explanatory JSON not found: {path}")
    with path.open(encoding="utf-8") as file:
        entries = json.load(file)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{'image', 'outputs'}} objects")
    explanations = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "outputs" not in entry:
            raise ValueError(f"{path}: entry {index} needs 'image' and 'outputs'")
        explanations[str(entry["image"])] = entry
    return explanations


def _rle_mask(array: np.ndarray) -> Mask:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    height, width = array.shape
    return Mask(height, width, rle={"size": [height, width], "counts": rle["counts"].decode("ascii")})


# --- OpenCV-equivalent polygon rasterisation -----------------------------------------------------


def _is_legacy(fill_rule: str) -> bool:
    if fill_rule not in FILL_RULES:
        raise ValueError(f"fill_rule must be one of {FILL_RULES}, got {fill_rule!r}")
    return fill_rule == "opencv<4.11"


@dataclasses.dataclass(frozen=True)
class _PolygonPatch:
    """The pixels of one rasterised polygon: a bool ``patch`` whose top-left pixel is ``(top, left)``."""

    top: int
    left: int
    patch: np.ndarray

    @property
    def area(self) -> int:
        return int(self.patch.sum())

    def paint(self, canvas: np.ndarray, value: Any) -> None:
        rows, cols = self.patch.shape
        canvas[self.top : self.top + rows, self.left : self.left + cols][self.patch] = value

    @classmethod
    def rasterize(
        cls, points: Sequence[Sequence[float]], height: int, width: int, *, fill_rule: str
    ) -> _PolygonPatch:
        legacy = _is_legacy(fill_rule)
        vertices = np.asarray(points, dtype=np.float64)
        if vertices.size == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        if vertices.ndim != 2 or vertices.shape[1] != 2:
            raise ValueError(f"polygon points must be [[x, y], ...], got shape {vertices.shape}")
        vertices = vertices.astype(np.int32).tolist()  # truncation toward zero, like np.int32(points)
        line_pixels, edges = [], []
        for (x0, y0), (x1, y1) in zip(vertices[-1:] + vertices[:-1], vertices, strict=True):
            inside = 0 <= x0 < width and 0 <= x1 < width and 0 <= y0 < height and 0 <= y1 < height
            visible, clipped = (
                (True, (x0, y0, x1, y1)) if inside else _clip_segment(x0, y0, x1, y1, width, height)
            )
            if visible:
                line_pixels.append(_line_pixels(*clipped))
            if y0 != y1:
                edges.append(_scanline_edge((x0, y0, x1, y1), clipped, was_clipped=not inside, legacy=legacy))
        return cls._assemble(line_pixels, _scanline_spans(edges, height, width, legacy=legacy))

    @classmethod
    def _assemble(
        cls,
        line_pixels: list[tuple[np.ndarray, np.ndarray]],
        spans: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> _PolygonPatch:
        line_rows = np.concatenate([rows for rows, _ in line_pixels] + [np.zeros(0, dtype=np.int64)])
        line_cols = np.concatenate([cols for _, cols in line_pixels] + [np.zeros(0, dtype=np.int64)])
        span_rows, span_starts, span_ends = spans
        all_rows = np.concatenate([line_rows, span_rows])
        if all_rows.size == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        top, left = int(all_rows.min()), int(np.concatenate([line_cols, span_starts]).min())
        bottom, right = int(all_rows.max()), int(np.concatenate([line_cols, span_ends]).max())
        patch = np.zeros((bottom - top + 1, right - left + 1), dtype=bool)
        patch[line_rows - top, line_cols - left] = True
        # a +1 / -1 pair per span, then a running sum along each row, marks every covered pixel
        coverage = np.zeros((patch.shape[0], patch.shape[1] + 1), dtype=np.int32)
        np.add.at(coverage, (span_rows - top, span_starts - left), 1)
        np.add.at(coverage, (span_rows - top, span_ends - left + 1), -1)
        patch |= np.cumsum(coverage, axis=1)[:, :-1] > 0
        return cls(top, left, patch)


def _line_pixels(x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of OpenCV's 8-connected line from its left end point (``LineIterator``).

    Along the major axis step ``k`` moves the minor coordinate ``ceil((2·minor·k − major) / (2·major))``
    times, the closed form of OpenCV's error recurrence (``err = major − 2·minor``, step on ``err < 0``).
    """
    if x1 < x0:
        x0, y0, x1, y1 = x1, y1, x0, y0
    run, rise = x1 - x0, abs(y1 - y0)
    direction = -1 if y1 < y0 else 1
    major, minor = (rise, run) if rise > run else (run, rise)
    steps = np.arange(major + 1, dtype=np.int64)
    offsets = -((major - 2 * minor * steps) // (2 * major)) if major else np.zeros_like(steps)
    if rise > run:
        return y0 + direction * steps, x0 + offsets
    return y0 + direction * offsets, x0 + steps


def _clip_segment(
    x0: int, y0: int, x1: int, y1: int, width: int, height: int
) -> tuple[bool, tuple[int, int, int, int]]:
    """OpenCV's ``clipLine`` (Cohen-Sutherland with truncated intersections): whether any of the segment
    is inside the image, and the end points as ``clipLine`` leaves them (moved even when it returns
    false, unless both ends lie beyond the same side)."""
    right, bottom = width - 1, height - 1

    def outcode(x: int, y: int) -> int:
        return (x < 0) + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    code0, code1 = outcode(x0, y0), outcode(x1, y1)
    if (code0 & code1) == 0 and (code0 | code1) != 0:
        if code0 & 12:
            edge = 0 if code0 < 8 else bottom
            x0 += int((edge - y0) * (x1 - x0) / (y1 - y0))
            y0, code0 = edge, (x0 < 0) + (x0 > right) * 2
        if code1 & 12:
            edge = 0 if code1 < 8 else bottom
            x1 += int((edge - y1) * (x1 - x0) / (y1 - y0))
            y1, code1 = edge, (x1 < 0) + (x1 > right) * 2
        if (code0 & code1) == 0 and (code0 | code1) != 0:
            if code0:
                edge = 0 if code0 == 1 else right
                y0 += int((edge - x0) * (y1 - y0) / (x1 - x0))
                x0, code0 = edge, 0
            if code1:
                edge = 0 if code1 == 1 else right
                y1 += int((edge - x1) * (y1 - y0) / (x1 - x0))
                x1, code1 = edge, 0
    return (code0 | code1) == 0, (x0, y0, x1, y1)


def _scanline_edge(
    segment: tuple[int, int, int, int],
    clipped_segment: tuple[int, int, int, int],
    *,
    was_clipped: bool,
    legacy: bool,
) -> tuple[int, int, int, int]:
    """``(first_row, stop_row, x, step)`` of a non-horizontal polygon edge for the scanline fill: it
    crosses rows ``[first_row, stop_row)``, at ``x`` (16.16 fixed point) on the first and ``step``
    further per row. ``clipped_segment`` is ``segment`` after :func:`_clip_segment` (when ``was_clipped``).

    As in OpenCV, an edge that leaves the image takes its slope from its clipped end points (unless
    clipping made it horizontal) and ``x`` is extrapolated back to the unclipped first row; C's integer
    division truncates toward zero. OpenCV < 4.11 also shifts edges inside the image by half a pixel
    (its spans round both ends); OpenCV >= 4.11 does not (its spans take ceil / floor).
    """
    x0, y0, x1, y1 = segment
    anchor_x0, anchor_y0, anchor_x1, anchor_y1 = clipped_segment
    offset = 0
    if not was_clipped or anchor_y0 == anchor_y1:
        anchor_y0, anchor_y1 = y0, y1
        if legacy:
            anchor_x0, anchor_x1 = x0, x1
            offset = 0 if was_clipped else 1 << (_SHIFT - 1)
    fixed_x0, fixed_x1 = (anchor_x0 << _SHIFT) + offset, (anchor_x1 << _SHIFT) + offset
    numerator, denominator = fixed_x1 - fixed_x0, anchor_y1 - anchor_y0
    step = abs(numerator) // abs(denominator) * (1 if (numerator >= 0) == (denominator > 0) else -1)
    if y0 < y1:
        return y0, y1, fixed_x0 + (y0 - anchor_y0) * step, step
    return y1, y0, fixed_x1 + (y1 - anchor_y1) * step, step


def _scanline_spans(
    edges: list[tuple[int, int, int, int]], height: int, width: int, *, legacy: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, starts, ends)`` of the inclusive horizontal spans OpenCV's ``FillEdgeCollection`` paints.

    On every row the crossings of the active edges, sorted by x, pair up (1st-2nd, 3rd-4th, …; a closed
    polygon crosses each row an even number of times) and each pair fills ``[ceil(left), floor(right)]``
    (OpenCV >= 4.11) or ``[floor(left), floor(right)]`` of the half-pixel-shifted crossings (``legacy``,
    OpenCV < 4.11), clipped to the image. Only rows inside the image are computed.
    """
    rows_per_edge, crossings_per_edge = [], []
    for first_row, stop_row, x, step in edges:
        rows = np.arange(max(first_row, 0), min(stop_row, height), dtype=np.int64)
        rows_per_edge.append(rows)
        crossings_per_edge.append(x + (rows - first_row) * step)
    empty = np.zeros(0, dtype=np.int64)
    if not rows_per_edge:
        return empty, empty, empty
    rows, crossings = np.concatenate(rows_per_edge), np.concatenate(crossings_per_edge)
    order = np.lexsort((crossings, rows))
    rows, crossings = rows[order], crossings[order]
    if rows.size % 2 or not np.array_equal(rows[0::2], rows[1::2]):
        raise AssertionError("a closed polygon must cross every row an even number of times")
    rows = rows[0::2]
    starts = crossings[0::2] if legacy else crossings[0::2] + (1 << _SHIFT) - 1
    starts = starts >> _SHIFT
    ends = crossings[1::2] >> _SHIFT
    keep = (starts <= ends) & (starts < width) & (ends >= 0)
    return rows[keep], np.maximum(starts[keep], 0), np.minimum(ends[keep], width - 1)
