"""The mask-classification core: a decoder's query masks and class scores -> masks on the image.

X-SAM's segmentor is Mask2Former's: ``Q`` queries, each with a mask and a distribution over the
prompt's ``C`` classes plus background. Panoptic, semantic and instance segmentation read that
output as Mask2Former does (:func:`panoptic`, :func:`semantic`, :func:`instance`); the task modules
build their own selections (referring, GCG, interactive, visual grounding) on the helpers here.

Every function takes the final-stage logits of ONE decoder sample, as the model returns them:

* ``class_logits`` ``(Q, C + 1)``: ``C`` condition classes (prompt categories, phrases or regions) then
  background. Softmax runs over all ``C + 1`` columns and the background column is dropped afterwards.
  Pass exactly the sample's ``C`` classes: padded class slots of a batch would be read as extra classes
  (keep ``[:, :C]`` and the last column).
* ``mask_logits`` ``(Q, m, m)`` on the SAM canvas grid (``m = canvas_size / 8``, 128 officially),

plus the image's :class:`~xsam.processing.Frame`. Logits are read as float32, as in the official
evaluation. Every output is in original-image pixels: masks go back with the official chain of
:func:`xsam.processing.postprocess_masks` (bilinear to ``S x S``, crop ``[:h_s, :w_s]``, bilinear to
``H x W``).

**Only what can matter is upsampled.** The official code upsamples all ``Q`` masks to ``S²`` and
``H x W`` before it selects anything. Here a query is upsampled only if it can still change the result
(the chosen query for referring, the top-k queries that can pass the threshold for instance, the kept
queries for panoptic), in chunks so that peak memory stays at a few masks. Bilinear resizing treats
every mask on its own, so the upsampled values are the same floats as the official ones, and every
selection is replayed with the official operations (strict or non-strict comparisons, first index on
ties, ``topk(sorted=False)`` order), so the outputs are the official ones; ``docs/parity.md`` lists the
official post-processing function and golden fixture each selection reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..processing import Frame, postprocess_masks

NO_LABEL = 255
"""Label-map value for "no mask here" (refseg/reaseg/gcgseg/intseg maps, vgdseg id map)."""

# Upsampling runs over chunks of queries holding at most this many float32 values (canvas + output),
# about 128 MiB, instead of all Q masks at once.
_CHUNK_ELEMENTS = 1 << 25

# A query whose class probability is below ``threshold * (1 - SCORE_MARGIN)`` cannot reach the
# threshold: its score is probability x mean mask probability, and that mean is at most 1 up to float
# rounding (~1e-7), which the margin covers with room to spare.
SCORE_MARGIN = 1e-4

# The instance mask score divides by (mask area + this), as the official code does.
_AREA_EPSILON = 1e-6


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class PanopticSegment:
    """One entry of a panoptic result: segment ``id`` in the id map, ``label_id`` (index into the
    prompt's class list), ``is_thing`` (False for a fused stuff class), the query's class ``score``
    and the ``query`` it came from."""

    id: int
    label_id: int
    is_thing: bool
    score: float
    query: int

    def as_official(self) -> dict[str, int | bool | float]:
        """The official ``segments_info`` entry: ``id``, ``category_id``, ``isthing``, ``score`` (6 dp)."""
        return {
            "id": self.id,
            "category_id": self.label_id,
            "isthing": self.is_thing,
            "score": round(self.score, 6),
        }


@dataclass
class PanopticResult:
    """``segmentation`` ``(H, W)`` int32 segment ids (0 = void). ``segments`` has one entry per
    surviving query in query order, as the official list: queries of a fused stuff class repeat that
    class's segment id, each with its own score."""

    segmentation: torch.Tensor
    segments: list[PanopticSegment]


@dataclass
class InstanceResult:
    """``N`` instances in the official ``topk(sorted=False)`` order (not sorted by score).

    ``masks`` ``(N, H, W)`` bool (may be empty), ``labels`` ``(N,)`` int64 class (or region) index,
    ``scores`` ``(N,)`` float32 = class probability x mean mask probability inside the mask,
    ``boxes`` ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` from :func:`mask_to_box`, ``queries`` ``(N,)``
    int64 the decoder query of each instance (one query may appear with several labels).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    queries: torch.Tensor


@dataclass
class MaskResult:
    """One chosen mask: ``mask`` ``(H, W)`` bool, its ``score`` and the decoder ``query`` it came from."""

    mask: torch.Tensor
    score: float
    query: int

    def label_map(self) -> torch.Tensor:
        """``(H, W)`` int64: 1 inside the mask, :data:`NO_LABEL` (255) elsewhere (the official map)."""
        return torch.where(self.mask, 1, NO_LABEL)


# ------------------------------------------------------------------------------------------ helpers
def class_probabilities(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``(Q, C + 1)`` logits -> ``(Q, C)`` float32 probabilities (softmax with background, bg dropped)."""
    if class_logits.dim() != 2 or class_logits.shape[1] < 2:
        raise ValueError(f"class_logits must be (Q, C + 1) with C >= 1, got {tuple(class_logits.shape)}")
    if mask_logits.dim() != 3 or mask_logits.shape[0] != class_logits.shape[0]:
        raise ValueError(
            f"mask_logits must be (Q, m, m) with the Q of class_logits ({class_logits.shape[0]}), "
            f"got {tuple(mask_logits.shape)}"
        )
    return class_logits.float().softmax(dim=-1)[:, :-1]


def require_single_class(probabilities: torch.Tensor, task: str) -> None:
    if probabilities.shape[1] != 1:
        raise ValueError(f"{task} takes exactly one class (plus background), got {probabilities.shape[1]}")


def upsampled_chunks(
    mask_logits: torch.Tensor,
    queries: torch.Tensor,
    frame: Frame,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, logits)`` with ``logits`` ``(n, H, W)`` float32 the upsampled masks of
    ``queries[start:start + n]``, chunk after chunk."""
    per_mask = frame.canvas_size**2 + frame.original_size[0] * frame.original_size[1]
    step = max(1, _CHUNK_ELEMENTS // per_mask)
    for start in range(0, queries.numel(), step):
        chunk = mask_logits[queries[start : start + step]]
        yield start, postprocess_masks(chunk, frame)


def could_reach(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool mask of the entries whose instance score (<= probability) may still be >= ``threshold``."""
    if threshold <= 0:
        return torch.ones_like(probabilities, dtype=torch.bool)
    return probabilities >= threshold * (1 - SCORE_MARGIN)


def binary_masks_and_scores(
    mask_logits: torch.Tensor,
    queries: torch.Tensor,
    frame: Frame,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of ``queries`` ``(n,)`` (repeats allowed): ``(n, H, W)`` bool mask (logit > 0) and
    ``(n,)`` float32 mean sigmoid inside it, ``sum(sigmoid * mask) / (area + 1e-6)`` as the official."""
    unique, inverse = torch.unique(queries, return_inverse=True)
    binary = torch.empty((unique.numel(), *frame.original_size), dtype=torch.bool, device=mask_logits.device)
    mean_probability = torch.empty(unique.numel(), dtype=torch.float32, device=mask_logits.device)
    for start, logits in upsampled_chunks(mask_logits, unique, frame):
        positive = logits > 0
        binary[start : start + len(logits)] = positive
        flat_positive = positive.flatten(1).float()
        inside = (logits.sigmoid().flatten(1) * flat_positive).sum(1)
        mean_probability[start : start + len(logits)] = inside / (flat_positive.sum(1) + _AREA_EPSILON)
    return binary[inverse], mean_probability[inverse]


def ranked_entries(
    probabilities: torch.Tensor, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official ranking over the flattened ``(Q, C)`` probabilities: ``topk(k, sorted=False)`` with
    ``k = Q`` by default. Returns ``(probability, label, query)`` per entry, each ``(k,)``."""
    num_queries, num_classes = probabilities.shape
    k = num_queries if top_k is None else top_k
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top_probabilities, flat_index = probabilities.flatten().topk(min(k, probabilities.numel()), sorted=False)
    labels = flat_index % num_classes
    queries = torch.div(flat_index, num_classes, rounding_mode="floor")
    return top_probabilities, labels, queries


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes around masks, as detectron2's ``BitMasks.get_bounding_boxes`` (the official helper).

    Args:
        mask: ``(..., H, W)`` bool (or 0/1) masks.

    Returns:
        ``(..., 4)`` float32 ``(x0, y0, x1, y1)`` in pixels of the mask's frame: ``x0``/``y0`` the first
        column/row holding the mask, ``x1``/``y1`` one past the last (exclusive). Empty masks give zeros.
    """
    mask = mask.bool()
    columns = mask.any(dim=-2)
    rows = mask.any(dim=-1)

    def first_and_end(line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # argmax of a 0/1 tensor is the first 1; on the flipped line it counts from the end.
        first = line.to(torch.uint8).argmax(dim=-1)
        last = line.shape[-1] - 1 - line.flip(-1).to(torch.uint8).argmax(dim=-1)
        return first, last + 1

    x0, x1 = first_and_end(columns)
    y0, y1 = first_and_end(rows)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).to(torch.float32)
    return boxes.masked_fill(~rows.any(dim=-1, keepdim=True), 0.0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` float ``(x0, y0, x1, y1)`` boxes -> ``(N, M)``.

    Same arithmetic as detectron2's ``pairwise_iou`` (the official helper): areas ``(x1 - x0)(y1 - y0)``,
    and 0 wherever the boxes do not overlap (so two empty boxes give 0, not NaN).
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    extent = torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])
    intersection = extent.clamp(min=0).prod(dim=2)
    union = area1[:, None] + area2 - intersection
    return torch.where(intersection > 0, intersection / union, torch.zeros_like(intersection))


# ------------------------------------------------------------------------------------------ panoptic
def panoptic(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
    *,
    is_thing: Sequence[bool],
    threshold: float = 0.0,
    mask_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
    unique_ids: bool = False,
) -> PanopticResult:
    """Panoptic segmentation (official genseg panoptic branch, transformers-style ``compute_segments``).

    1. Per query: label = argmax over the ``C`` classes, score = that probability; keep queries with
       score **strictly greater** than ``threshold`` (0.0 in evaluation, 0.5 in the demo).
    2. Weighted masks ``score x sigmoid(mask)`` of the kept queries; each pixel goes to the kept query
       with the largest weighted mask (the first one on ties).
    3. A kept query becomes a segment if its assigned area and its area of ``weighted >= mask_threshold``
       (note: the *weighted* mask, as the official) are both > 0 and their ratio is strictly greater
       than ``overlap_threshold`` (the ratio is taken in float32 and compared in float64, as the
       official ``tensor.item() > 0.8``). Pixels of other queries stay void (0).
    4. Segment ids count up from 1 in query order; all queries of a stuff class (``is_thing`` False)
       share the id of that class's first segment (the official ``was_fused``). After such a reuse the
       official numbering continues from the reused id, so a later segment can get an id that is
       already taken (transformers issue #23461); ``unique_ids=True`` continues from the largest id
       instead. The official metadata's ``label_divisor`` (1000) is never read by this numbering, nor
       by the evaluator once ``segments_info`` is given, so it is not a parameter here.

    Only the kept queries are upsampled, chunk by chunk, with a running per-pixel maximum, so memory is
    ``O(H x W)`` however many queries survive.

    Args:
        class_logits: ``(Q, C + 1)``.
        mask_logits: ``(Q, m, m)`` canvas-grid logits.
        frame: the image's sizes on the SAM canvas.
        is_thing: ``C`` flags; False marks a stuff class whose segments are fused (demo: ``sem:``
            names; official: ``metadata.stuff_dataset_id_to_contiguous_id``).
        threshold: query score threshold (strict).
        mask_threshold: threshold on the weighted mask for the area ratio (non-strict).
        overlap_threshold: minimum assigned / own area ratio (strict).
        unique_ids: fix the official id reuse described above (breaks parity only when it triggers).

    Returns:
        :class:`PanopticResult` with an int32 ``(H, W)`` id map on the logits' device.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    if len(is_thing) != probabilities.shape[1]:
        raise ValueError(f"is_thing has {len(is_thing)} flags for {probabilities.shape[1]} classes")
    scores, labels = probabilities.max(dim=-1)
    kept = torch.nonzero(scores > threshold).flatten()
    if kept.numel() == 0:
        empty = torch.zeros(frame.original_size, dtype=torch.int32, device=mask_logits.device)
        return PanopticResult(empty, [])
    winner, own_area = _weighted_winner(mask_logits, kept, scores[kept], frame, mask_threshold)
    assigned_area = torch.bincount(winner.flatten(), minlength=kept.numel())
    ratio = (assigned_area / own_area).double()  # int64 / int64 -> float32, as the official
    valid = (assigned_area > 0) & (own_area > 0) & (ratio > overlap_threshold)
    segments, id_of_kept = _number_segments(
        kept.tolist(), labels.tolist(), scores.tolist(), valid.tolist(), is_thing, unique_ids
    )
    lookup = torch.tensor(id_of_kept, dtype=torch.int32, device=winner.device)
    return PanopticResult(lookup[winner], segments)


def _fold_argmax(
    values: torch.Tensor, start: int, best: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a chunk ``(k, H, W)`` whose first entry has index ``start`` into a running per-pixel
    ``(max value, argmax index)``; ties keep the earlier index, as one argmax over all would."""
    index = values.argmax(dim=0)
    value = values.gather(0, index[None])[0]
    index = index + start
    if best is None:
        return value, index
    best_value, winner = best
    better = value > best_value
    return torch.where(better, value, best_value), torch.where(better, index, winner)


def _weighted_winner(
    mask_logits: torch.Tensor,
    queries: torch.Tensor,
    scores: torch.Tensor,
    frame: Frame,
    mask_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` int64 position in ``queries`` of the largest ``score x sigmoid(mask)`` per pixel, and
    ``(n,)`` int64 area where that weighted mask is ``>= mask_threshold``, streamed over query chunks.

    Within a chunk ``argmax`` keeps the first maximum; across chunks the running winner changes only on
    a strictly larger value, so ties go to the earliest query exactly as one argmax over all of them.
    """
    best = None
    own_areas = []
    for start, logits in upsampled_chunks(mask_logits, queries, frame):
        weighted = logits.sigmoid() * scores[start : start + len(logits)].view(-1, 1, 1)
        own_areas.append((weighted >= mask_threshold).flatten(1).sum(1))
        best = _fold_argmax(weighted, start, best)
    return best[1], torch.cat(own_areas)


def _number_segments(
    kept: list[int],
    labels: list[int],
    scores: list[float],
    valid: list[bool],
    is_thing: Sequence[bool],
    unique_ids: bool,
) -> tuple[list[PanopticSegment], list[int]]:
    """Official segment numbering over the kept queries (in query order). Returns the segments and, per
    kept position, its segment id (0 for positions that made no segment)."""
    segments: list[PanopticSegment] = []
    id_of_kept = [0] * len(kept)
    stuff_segment: dict[int, int] = {}
    segment_id = largest_id = 0
    for position, query in enumerate(kept):
        if not valid[position]:
            continue
        label = labels[query]
        fused = not is_thing[label]
        if label in stuff_segment:
            segment_id = stuff_segment[label]
        else:
            segment_id = (largest_id if unique_ids else segment_id) + 1
        largest_id = max(largest_id, segment_id)
        if fused:
            stuff_segment[label] = segment_id
        id_of_kept[position] = segment_id
        segments.append(PanopticSegment(segment_id, label, not fused, scores[query], query))
    return segments, id_of_kept


# ------------------------------------------------------------------------------------------ semantic
def semantic(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
) -> torch.Tensor:
    """Semantic segmentation (official genseg ``sem`` branch).

    Class maps ``sum_q p(q, c) x sigmoid(mask_q)`` are formed **on the canvas** (after the first
    bilinear upsampling, before the crop), then cropped, resized bilinearly to the original size and
    arg-maxed over classes. The order matters: sigmoid is not linear, so this differs from thresholding
    masks that were fully upsampled first. The sum over queries is one einsum over all queries, as the
    official (summing query chunks would change float rounding); only the resize and the arg-max run
    in class chunks, which is exact.

    Returns:
        ``(H, W)`` int64 class index (into the prompt's class list) per pixel.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    canvas_probabilities = _cropped_canvas_probabilities(mask_logits, frame)
    class_maps = torch.einsum("bqc,bqhw->bchw", probabilities[None], canvas_probabilities[None])[0]
    return _resized_argmax(class_maps, frame.original_size)


def _cropped_canvas_probabilities(mask_logits: torch.Tensor, frame: Frame) -> torch.Tensor:
    """``(Q, m, m)`` logits -> ``(Q, h_s, w_s)`` float32 sigmoid of the canvas-size upsampling, cropped."""
    height, width = frame.scaled_size
    canvas_size = frame.canvas_size
    out = torch.empty((mask_logits.shape[0], height, width), dtype=torch.float32, device=mask_logits.device)
    step = max(1, _CHUNK_ELEMENTS // (canvas_size * canvas_size))
    for start in range(0, mask_logits.shape[0], step):
        chunk = mask_logits[start : start + step].to(torch.float32)[None]
        canvas = F.interpolate(chunk, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False)
        out[start : start + step] = canvas[0, :, :height, :width].sigmoid()
    return out


def _resized_argmax(class_maps: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(C, h, w)`` maps to ``(H, W)`` then argmax over ``C`` (first on ties)."""
    pixels = original_size[0] * original_size[1]
    step = max(1, _CHUNK_ELEMENTS // max(pixels, 1))
    best = None
    for start in range(0, class_maps.shape[0], step):
        chunk = class_maps[None, start : start + step]
        resized = F.interpolate(chunk, size=tuple(original_size), mode="bilinear", align_corners=False)[0]
        best = _fold_argmax(resized, start, best)
    return best[1]


# ------------------------------------------------------------------------------------------ instance
def instance(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
    *,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> InstanceResult:
    """Instance segmentation (official genseg ``ins`` branch; the ``instances`` it returns).

    The ``Q x C`` class probabilities are flattened and the top ``k`` (``k = Q`` by default, as the
    official) taken with ``topk(sorted=False)``; each entry is a (query, label) pair, and a query may
    appear with several labels. Mask = upsampled logit ``> 0``; score = class probability x
    ``sum(sigmoid x mask) / (area + 1e-6)``; entries with score ``>= threshold`` are kept (0.0 in
    evaluation keeps all ``k``, empty masks included). Queries whose class probability cannot reach
    the threshold are never upsampled.

    Returns:
        :class:`InstanceResult` in the official entry order.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    top_probabilities, labels, queries = ranked_entries(probabilities, top_k)
    candidates = torch.nonzero(could_reach(top_probabilities, threshold)).flatten()
    masks, mean_probability = binary_masks_and_scores(mask_logits, queries[candidates], frame)
    scores = top_probabilities[candidates] * mean_probability
    keep = scores >= threshold
    kept_masks = masks[keep]
    return InstanceResult(
        masks=kept_masks,
        labels=labels[candidates][keep],
        scores=scores[keep],
        boxes=mask_to_box(kept_masks),
        queries=queries[candidates][keep],
    )


def instance_id_map(result: InstanceResult, *, fill: int = NO_LABEL) -> torch.Tensor:
    """Paint instances into one id map, as the official genseg-instance / vgdseg ``segmentation``.

    Instances are painted in result order, later ones overwriting earlier ones; empty masks are skipped
    and do not use up an id, so ids run 0, 1, 2, ... over the painted instances (the ``id`` of the
    official ``segments_info``, see :func:`instance_segments_info`). (The official paints after a
    float64 ``score >= threshold`` test while its ``instances`` use float32; the two differ only for a
    score within float32 rounding of a threshold float32 cannot represent.)

    Args:
        result: from :func:`instance` / :func:`visual_grounding`.
        fill: value where no instance is: 255 for vgdseg (``post_vgdseg_*``), -1 for genseg instance.

    Returns:
        ``(H, W)`` int64.
    """
    id_map = torch.full(result.masks.shape[1:], fill, dtype=torch.int64, device=result.masks.device)
    for segment_id, position in enumerate(_painted_positions(result)):
        id_map[result.masks[position]] = segment_id
    return id_map


def instance_segments_info(result: InstanceResult) -> list[dict[str, int | bool | float]]:
    """The official ``segments_info`` of :func:`instance_id_map`: ``id``, ``label_id``,
    ``was_fused`` (always False) and ``score`` (6 dp) of each painted (non-empty) instance."""
    return [
        {
            "id": segment_id,
            "label_id": int(result.labels[position]),
            "was_fused": False,
            "score": round(float(result.scores[position]), 6),
        }
        for segment_id, position in enumerate(_painted_positions(result))
    ]


def _painted_positions(result: InstanceResult) -> list[int]:
    return torch.nonzero(result.masks.flatten(1).any(dim=1)).flatten().tolist()
