"""Post-processing of every task: hand-built cases with known answers, and equality with an "upsample
everything" reference written here from the official semantics. A few checks at the end read the
official fixtures (``XSAM_PARITY_DIR``) and are skipped without them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parity_support import fixture_params, load
from xsam.processing import Frame, restore_prompt_masks
from xsam.tasks import gcg as gcg_module
from xsam.tasks import mask_classification as post
from xsam.tasks import referring as referring_module
from xsam.tasks.gcg import grounded_conversation
from xsam.tasks.interactive import interactive
from xsam.tasks.mask_classification import (
    NO_LABEL,
    box_iou,
    instance,
    instance_id_map,
    instance_segments_info,
    mask_to_box,
    panoptic,
    semantic,
)
from xsam.tasks.referring import referring
from xsam.tasks.visual_grounding import visual_grounding

INSIDE, OUTSIDE = 20.0, -20.0
"""Mask logits whose sigmoid is 1.0 / ~2e-9 in float32."""

# Identity geometry: canvas = logits grid = scaled = original, so every resize is the identity and
# hand-built masks come back pixel for pixel.
SIDE = 8
IDENTITY = ((SIDE, SIDE), (SIDE, SIDE), SIDE)

# Non-trivial geometry for the reference comparisons: 8x8 logits, 64 canvas, crop, downscale.
GEOMETRY = ((64, 45), (50, 37), 64)


def _frame(geometry: tuple) -> Frame:
    """A ``(scaled_size, original_size, canvas_size)`` geometry as the Frame the post-processing takes."""
    scaled, original, canvas_size = geometry
    return Frame(original, scaled, canvas_size)


FRAME = _frame(IDENTITY)


def _class_logits(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is ``[p_1 .. p_C, background]`` with background = 1 - sum(p)."""
    rows = torch.tensor(probabilities, dtype=torch.float64)
    background = 1 - rows.sum(dim=1, keepdim=True)
    assert (background > 0).all()
    return torch.cat([rows, background], dim=1).log().float()


def _masks(*regions: tuple[slice, slice]) -> torch.Tensor:
    """One ``(SIDE, SIDE)`` mask-logit map per ``(rows, cols)`` region: INSIDE there, OUTSIDE elsewhere."""
    logits = torch.full((len(regions), SIDE, SIDE), OUTSIDE)
    for index, (rows, cols) in enumerate(regions):
        logits[index, rows, cols] = INSIDE
    return logits


def _random_case(seed: int, queries: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    class_logits = 2.5 * torch.randn(queries, classes + 1, generator=generator)
    mask_logits = 4.0 * torch.randn(queries, 8, 8, generator=generator)
    return class_logits, mask_logits


@pytest.fixture
def tiny_chunks(monkeypatch):
    """One mask per upsampling chunk, so the streaming code crosses chunk boundaries."""
    monkeypatch.setattr(post, "_CHUNK_ELEMENTS", 1)


# ------------------------------------------------------------------------------------------ reference
def _reference_upsample(mask_logits, scaled_size, original_size, canvas_size):
    canvas = F.interpolate(
        mask_logits[None].float(), size=(canvas_size,) * 2, mode="bilinear", align_corners=False
    )
    cropped = canvas[:, :, : scaled_size[0], : scaled_size[1]]
    return F.interpolate(cropped, size=original_size, mode="bilinear", align_corners=False)[0]


def _reference_panoptic(class_logits, mask_logits, geometry, is_thing, threshold, overlap):
    probabilities = class_logits.softmax(-1)[:, :-1]
    scores, labels = probabilities.max(-1)
    keep = scores > threshold
    masks = _reference_upsample(mask_logits, *geometry).sigmoid()[keep]
    scores, labels = scores[keep], labels[keep]
    segmentation = torch.zeros(geometry[1], dtype=torch.int32)
    segments = []
    if not len(labels):
        return segmentation, segments
    masks = F.interpolate(masks[None], size=geometry[1], mode="bilinear", align_corners=False)[0]
    masks *= scores.view(-1, 1, 1)
    winner = masks.argmax(0)
    memory, current = {}, 0
    for k in range(len(labels)):
        label = labels[k].item()
        fuse = not is_thing[label]
        mask_k = winner == k
        area, own = mask_k.sum(), (masks[k] >= 0.5).sum()
        exists = bool(area > 0 and own > 0)
        if exists and not (area / own).item() > overlap:
            exists = False
        if exists:
            current = memory[label] if label in memory else current + 1
            segmentation[mask_k] = current
            segments.append(
                {
                    "id": current,
                    "category_id": label,
                    "isthing": not fuse,
                    "score": round(scores[k].item(), 6),
                }
            )
            if fuse:
                memory[label] = current
    return segmentation, segments


def _reference_semantic(class_logits, mask_logits, geometry):
    scaled, original, canvas_size = geometry
    canvas = F.interpolate(mask_logits[None], size=(canvas_size,) * 2, mode="bilinear", align_corners=False)
    maps = torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[None, :, :-1], canvas.sigmoid())[0]
    maps = F.interpolate(
        maps[None, :, : scaled[0], : scaled[1]], size=original, mode="bilinear", align_corners=False
    )
    return maps[0].argmax(0)


def _reference_instance(class_logits, mask_logits, geometry, threshold):
    probabilities = class_logits.softmax(-1)[:, :-1]
    num_queries, num_classes = probabilities.shape
    logits = _reference_upsample(mask_logits, *geometry)
    top, index = probabilities.flatten().topk(num_queries, sorted=False)
    labels, queries = index % num_classes, index // num_classes
    logits = logits[queries]
    binary = (logits > 0).float()
    mean = (logits.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * mean
    keep = scores >= threshold
    return binary[keep].bool(), labels[keep], scores[keep], queries[keep]


def _reference_interactive(class_logits, mask_logits, geometry, prompt_mask, threshold):
    masks, _, scores, queries = _reference_instance(class_logits, mask_logits, geometry, float("-inf"))
    keep = (scores >= threshold) | (scores == scores.max())
    masks, scores, queries = masks[keep], scores[keep], queries[keep]
    iou = box_iou(mask_to_box(masks), mask_to_box(prompt_mask)[None])
    choice = iou.argmax(dim=0)
    return masks[choice][0], scores[choice].item(), queries[choice].item()


# ------------------------------------------------------------------------------------------ panoptic
def test_overlap_goes_to_the_larger_weighted_mask():
    # Query 0 (score 0.9) and query 1 (score 0.7) overlap in columns 3-4; query 1 keeps 3/5 of its mask.
    class_logits = _class_logits([[0.9, 0.0], [0.0, 0.7]])
    mask_logits = _masks((slice(0, 4), slice(0, 5)), (slice(0, 4), slice(3, 8)))
    result = panoptic(class_logits, mask_logits, FRAME, is_thing=[True, True], overlap_threshold=0.5)
    assert (result.segmentation[0:4, 0:5] == 1).all()
    assert (result.segmentation[0:4, 5:8] == 2).all()
    # Every pixel goes to some kept query: where both masks are ~0 the larger score still wins.
    assert (result.segmentation[4:] == 1).all()
    assert [(s.id, s.label_id, s.is_thing, s.query) for s in result.segments] == [
        (1, 0, True, 0),
        (2, 1, True, 1),
    ]
    assert result.segments[1].score == pytest.approx(0.7, abs=1e-6)
    assert result.segmentation.dtype == torch.int32


def test_overlap_rule_drops_a_mostly_covered_query():
    # Query 1 keeps 3/5 = 0.6 <= 0.8 of its own area: no segment, and its leftover pixels are void.
    class_logits = _class_logits([[0.9, 0.0], [0.0, 0.7]])
    mask_logits = _masks((slice(0, 4), slice(0, 5)), (slice(0, 4), slice(3, 8)))
    result = panoptic(class_logits, mask_logits, FRAME, is_thing=[True, True])
    assert [s.query for s in result.segments] == [0]
    assert (result.segmentation[0:4, 5:8] == 0).all()
    disabled = panoptic(class_logits, mask_logits, FRAME, is_thing=[True, True], overlap_threshold=0.0)
    assert [s.query for s in disabled.segments] == [0, 1]


def test_own_area_uses_the_score_weighted_mask():
    # Official quirk: area(score * sigmoid >= 0.5), so a query scoring <= 0.5 never makes a segment.
    class_logits = _class_logits([[0.45]])
    result = panoptic(class_logits, _masks((slice(0, 8), slice(0, 8))), FRAME, is_thing=[True])
    assert result.segments == [] and (result.segmentation == 0).all()


def test_stuff_queries_of_one_class_fuse_into_one_segment():
    class_logits = _class_logits([[0.9, 0.0], [0.8, 0.0], [0.0, 0.85]])
    mask_logits = _masks((slice(0, 2), slice(0, 8)), (slice(2, 4), slice(0, 8)), (slice(4, 8), slice(0, 8)))
    result = panoptic(class_logits, mask_logits, FRAME, is_thing=[False, True])
    # Both stuff queries keep their own entry (as the official list) with the fused id 1.
    assert [s.as_official() for s in result.segments] == [
        {"id": 1, "category_id": 0, "isthing": False, "score": 0.9},
        {"id": 1, "category_id": 0, "isthing": False, "score": 0.8},
        {"id": 2, "category_id": 1, "isthing": True, "score": 0.85},
    ]
    assert (result.segmentation[0:4] == 1).all() and (result.segmentation[4:] == 2).all()


def test_official_id_reuse_and_the_unique_ids_fix():
    # stuff (id 1), thing (id 2), stuff again (reuses 1), thing: official "previous id + 1" gives 2 again.
    class_logits = _class_logits([[0.9, 0.0], [0.0, 0.9], [0.9, 0.0], [0.0, 0.9]])
    rows = [(slice(2 * i, 2 * i + 2), slice(0, 8)) for i in range(4)]
    mask_logits = _masks(*rows)
    official = panoptic(class_logits, mask_logits, FRAME, is_thing=[False, True])
    assert [s.id for s in official.segments] == [1, 2, 1, 2]
    fixed = panoptic(class_logits, mask_logits, FRAME, is_thing=[False, True], unique_ids=True)
    assert [s.id for s in fixed.segments] == [1, 2, 1, 3]
    assert (fixed.segmentation[6:8] == 3).all()


def test_score_threshold_is_strict_and_removes_pixel_thieves():
    # Query 1 (score 0.3) wins the right half over query 0's weak mask there, leaving it void.
    class_logits = _class_logits([[0.9], [0.3]])
    mask_logits = torch.full((2, SIDE, SIDE), OUTSIDE)
    mask_logits[0] = INSIDE
    mask_logits[0, :, 4:] = -1.0  # sigmoid 0.27: 0.9 * 0.27 < 0.3
    mask_logits[1, :, 4:] = INSIDE
    kept_all = panoptic(class_logits, mask_logits, FRAME, is_thing=[True], overlap_threshold=0.0)
    assert (kept_all.segmentation[:, 4:] == 0).all() and (kept_all.segmentation[:, :4] == 1).all()
    score = class_logits.softmax(-1)[1, 0].item()  # the exact float32 score of query 1
    strict = panoptic(
        class_logits, mask_logits, FRAME, is_thing=[True], threshold=score, overlap_threshold=0.0
    )
    assert (strict.segmentation == 1).all()


def test_ties_go_to_the_first_query_across_chunks(tiny_chunks):
    class_logits = _class_logits([[0.9], [0.9]])
    mask_logits = _masks((slice(0, 8), slice(0, 8)), (slice(0, 8), slice(0, 8)))
    result = panoptic(class_logits, mask_logits, FRAME, is_thing=[True])
    assert [s.query for s in result.segments] == [0] and (result.segmentation == 1).all()


def test_no_query_above_threshold_gives_an_all_void_map():
    result = panoptic(
        _class_logits([[0.4]]), _masks((slice(0, 8), slice(0, 8))), FRAME, is_thing=[True], threshold=0.5
    )
    assert (
        result.segments == []
        and result.segmentation.shape == (SIDE, SIDE)
        and (result.segmentation == 0).all()
    )


@pytest.mark.parametrize(("threshold", "overlap"), [(0.0, 0.8), (0.0, 0.0), (0.5, 0.8), (0.5, 0.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_equals_the_upsample_everything_reference(tiny_chunks, seed, threshold, overlap):
    class_logits, mask_logits = _random_case(seed)
    is_thing = [True, False, False]
    ours = panoptic(
        class_logits,
        mask_logits,
        _frame(GEOMETRY),
        is_thing=is_thing,
        threshold=threshold,
        overlap_threshold=overlap,
    )
    segmentation, segments = _reference_panoptic(
        class_logits, mask_logits, GEOMETRY, is_thing, threshold, overlap
    )
    assert torch.equal(ours.segmentation, segmentation)
    assert [s.as_official() for s in ours.segments] == segments


def test_random_cases_make_panoptic_segments():
    # Guards the reference comparison above against comparing empty results only.
    class_logits, mask_logits = _random_case(0)
    result = panoptic(
        class_logits, mask_logits, _frame(GEOMETRY), is_thing=[True, False, False], overlap_threshold=0.0
    )
    assert len(result.segments) >= 2


# ------------------------------------------------------------------------------------------ semantic
def test_semantic_picks_the_class_with_the_largest_summed_probability():
    class_logits = _class_logits([[0.9, 0.05], [0.05, 0.9]])
    mask_logits = _masks((slice(0, 8), slice(0, 4)), (slice(0, 8), slice(4, 8)))
    labels = semantic(class_logits, mask_logits, FRAME)
    assert labels.dtype == torch.int64
    assert (labels[:, :4] == 0).all() and (labels[:, 4:] == 1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_equals_the_reference(tiny_chunks, seed):
    class_logits, mask_logits = _random_case(seed, classes=4)
    assert torch.equal(
        semantic(class_logits, mask_logits, _frame(GEOMETRY)),
        _reference_semantic(class_logits, mask_logits, GEOMETRY),
    )


def test_semantic_sums_on_the_canvas_not_after_full_upsampling():
    # Summing sigmoids of fully upsampled logits would be a different (non-official) result somewhere.
    class_logits, mask_logits = _random_case(3, queries=20, classes=4)
    geometry = ((64, 64), (23, 23), 64)
    late = torch.einsum(
        "qc,qhw->chw", class_logits.softmax(-1)[:, :-1], _reference_upsample(mask_logits, *geometry).sigmoid()
    ).argmax(0)
    ours = semantic(class_logits, mask_logits, _frame(geometry))
    assert torch.equal(ours, _reference_semantic(class_logits, mask_logits, geometry))
    assert not torch.equal(ours, late)


# ------------------------------------------------------------------------------------------ instance
def test_instance_takes_top_q_pairs_and_scores_by_mean_mask_probability():
    # 3 queries x 2 classes: the top 3 of the 6 probabilities are (q0, c0), (q1, c1), (q0, c1).
    class_logits = _class_logits([[0.5, 0.3], [0.1, 0.45], [0.2, 0.1]])
    mask_logits = torch.full((3, SIDE, SIDE), OUTSIDE)
    mask_logits[0, 0:2, 0:3] = 1.0
    mask_logits[1, 4:8, 4:8] = 2.0
    result = instance(class_logits, mask_logits, FRAME)
    pairs = sorted(zip(result.queries.tolist(), result.labels.tolist(), result.scores.tolist(), strict=True))
    sigmoid = torch.sigmoid(torch.tensor([1.0, 2.0])).tolist()
    expected = [
        (0, 0, 0.5 * sigmoid[0] * 6 / (6 + 1e-6)),
        (0, 1, 0.3 * sigmoid[0] * 6 / (6 + 1e-6)),
        (1, 1, 0.45 * sigmoid[1] * 16 / (16 + 1e-6)),
    ]
    assert [p[:2] for p in pairs] == [e[:2] for e in expected]
    assert [p[2] for p in pairs] == pytest.approx([e[2] for e in expected], rel=1e-5)
    by_query = {
        q: (m, b)
        for q, m, b in zip(result.queries.tolist(), result.masks, result.boxes.tolist(), strict=True)
    }
    assert by_query[1][0].sum() == 16 and by_query[1][1] == [4.0, 4.0, 8.0, 8.0]


def test_instance_threshold_is_inclusive_and_top_k_limits_entries():
    class_logits = _class_logits([[0.6], [0.3]])
    mask_logits = _masks((slice(0, 2), slice(0, 2)), (slice(4, 8), slice(4, 8)))
    everything = instance(class_logits, mask_logits, FRAME)
    assert sorted(everything.queries.tolist()) == [0, 1]
    score_0 = everything.scores[everything.queries == 0].item()
    high = instance(class_logits, mask_logits, FRAME, threshold=score_0)
    assert high.queries.tolist() == [0]
    assert instance(class_logits, mask_logits, FRAME, top_k=1).queries.tolist() == [0]


@pytest.mark.parametrize("threshold", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_instance_equals_the_reference(tiny_chunks, seed, threshold):
    class_logits, mask_logits = _random_case(seed)
    result = instance(class_logits, mask_logits, _frame(GEOMETRY), threshold=threshold)
    masks, labels, scores, queries = _reference_instance(class_logits, mask_logits, GEOMETRY, threshold)
    assert torch.equal(result.queries, queries) and torch.equal(result.labels, labels)
    assert torch.equal(result.masks, masks)
    torch.testing.assert_close(result.scores, scores, rtol=1e-6, atol=1e-7)
    assert torch.equal(result.boxes, mask_to_box(masks))


def test_instance_id_map_paints_in_order_and_skips_empty_masks():
    class_logits = _class_logits([[0.6], [0.5], [0.4]])
    mask_logits = torch.full((3, SIDE, SIDE), OUTSIDE)
    mask_logits[0, 0:4, 0:4] = INSIDE
    mask_logits[2, 2:6, 2:6] = INSIDE  # query 1 stays empty
    result = instance(class_logits, mask_logits, FRAME)
    order = result.queries.tolist()
    id_map = instance_id_map(result)
    painted = [q for q in order if q != 1]
    last = painted[-1]
    overlap_id = painted.index(last)
    assert id_map[3, 3] == overlap_id  # the later instance overwrites the overlap
    assert id_map[7, 7] == NO_LABEL and instance_id_map(result, fill=-1)[7, 7] == -1
    info = instance_segments_info(result)
    assert [entry["id"] for entry in info] == [0, 1]
    assert all(entry["was_fused"] is False for entry in info)


def test_visual_grounding_maps_labels_to_regions():
    class_logits = _class_logits([[0.7, 0.1], [0.1, 0.8]])
    mask_logits = _masks((slice(0, 4), slice(0, 8)), (slice(4, 8), slice(0, 8)))
    result = visual_grounding(class_logits, mask_logits, FRAME, region_labels=[17, 42], threshold=0.5)
    assert dict(zip(result.queries.tolist(), result.labels.tolist(), strict=True)) == {0: 17, 1: 42}
    plain = visual_grounding(class_logits, mask_logits, FRAME, threshold=0.5)
    assert dict(zip(plain.queries.tolist(), plain.labels.tolist(), strict=True)) == {0: 0, 1: 1}
    with pytest.raises(ValueError, match="region_labels"):
        visual_grounding(class_logits, mask_logits, FRAME, region_labels=[1])


# ------------------------------------------------------------------------------------------ single masks
def test_referring_picks_the_most_probable_query_and_upsamples_only_it(upsampled_counts):
    class_logits = _class_logits([[0.2], [0.95], [0.6]])
    mask_logits = _masks((slice(0, 8), slice(0, 8)), (slice(2, 5), slice(1, 3)), (slice(0, 1), slice(0, 1)))
    result = referring(class_logits, mask_logits, FRAME)
    assert upsampled_counts == [1]
    assert result.query == 1 and result.score == pytest.approx(0.95, abs=1e-6)
    assert result.mask.sum() == 6 and result.mask[2:5, 1:3].all()
    assert set(result.label_map().unique().tolist()) == {1, NO_LABEL}
    with pytest.raises(ValueError, match="exactly one class"):
        referring(_class_logits([[0.5, 0.2]]), mask_logits[:1], FRAME)


def test_grounded_conversation_overwrites_in_phrase_order():
    # Phrase 0 -> query 1 (left 5 columns), phrase 1 -> query 0 (right 5 columns), overlap in 3-4.
    class_logits = _class_logits([[0.1, 0.8], [0.7, 0.1], [0.2, 0.05]])
    mask_logits = _masks((slice(0, 8), slice(3, 8)), (slice(0, 8), slice(0, 5)), (slice(0, 1), slice(0, 1)))
    result = grounded_conversation(class_logits, mask_logits, FRAME)
    assert result.queries.tolist() == [1, 0]
    assert (result.label_map[:, 0:3] == 1).all() and (result.label_map[:, 3:8] == 2).all()
    assert result.masks.shape == (2, SIDE, SIDE) and result.masks[0, :, 3:5].all()
    empty = grounded_conversation(class_logits, torch.full((3, SIDE, SIDE), OUTSIDE), FRAME)
    assert (empty.label_map == NO_LABEL).all()


def test_interactive_chooses_the_kept_mask_whose_box_matches_the_prompt():
    class_logits = _class_logits([[0.9], [0.8], [0.1]])
    mask_logits = _masks((slice(0, 3), slice(0, 3)), (slice(4, 8), slice(4, 8)), (slice(4, 8), slice(4, 8)))
    prompt = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    prompt[5:7, 5:8] = True
    result = interactive(class_logits, mask_logits, FRAME, prompt)
    assert result.query == 1 and result.mask[4:8, 4:8].all() and result.mask.sum() == 16


def test_interactive_keeps_only_the_best_query_when_none_reaches_the_threshold():
    # Both scores < 0.5: only query 0 (best score) is a candidate, though query 1 matches the prompt.
    class_logits = _class_logits([[0.4], [0.3]])
    mask_logits = _masks((slice(0, 3), slice(0, 3)), (slice(4, 8), slice(4, 8)))
    prompt = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    prompt[4:8, 4:8] = True
    result = interactive(class_logits, mask_logits, FRAME, prompt)
    assert result.query == 0 and result.score == pytest.approx(0.4, rel=1e-5)
    assert interactive(class_logits, mask_logits, FRAME, prompt, threshold=0.25).query == 1


def test_interactive_survives_nan_scores():
    # degenerate logits (e.g. a random bf16 model) make some scores NaN; a mask must still come back
    class_logits = _class_logits([[0.4], [0.3]])
    mask_logits = _masks((slice(0, 3), slice(0, 3)), (slice(4, 8), slice(4, 8)))
    mask_logits[0] = float("nan")
    prompt = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    prompt[4:8, 4:8] = True
    result = interactive(class_logits, mask_logits, FRAME, prompt)
    assert result.query == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_interactive_equals_the_reference(tiny_chunks, seed):
    class_logits, mask_logits = _random_case(seed, queries=16, classes=1)
    prompt = torch.zeros(GEOMETRY[1], dtype=torch.bool)
    prompt[10 + seed : 20 + seed, 5:15] = True
    for threshold in (0.5, 0.2):
        mask, score, query = _reference_interactive(class_logits, mask_logits, GEOMETRY, prompt, threshold)
        result = interactive(class_logits, mask_logits, _frame(GEOMETRY), prompt, threshold=threshold)
        assert result.query == query and torch.equal(result.mask, mask)
        assert result.score == pytest.approx(score, rel=1e-6)


def test_interactive_with_only_empty_masks_falls_back_like_the_reference():
    # Every score is 0, so every query ties for the best; the first in topk order wins (IoU all 0).
    class_logits, _ = _random_case(7, queries=16, classes=1)
    mask_logits = torch.full((16, 8, 8), OUTSIDE)
    prompt = torch.ones(GEOMETRY[1], dtype=torch.bool)
    _, score, query = _reference_interactive(class_logits, mask_logits, GEOMETRY, prompt, 0.5)
    result = interactive(class_logits, mask_logits, _frame(GEOMETRY), prompt)
    assert (result.query, result.score) == (query, score) and not result.mask.any()


def test_referring_and_grounding_equal_the_reference():
    class_logits, mask_logits = _random_case(5, classes=3)
    logits = _reference_upsample(mask_logits, *GEOMETRY)
    grounded = grounded_conversation(class_logits, mask_logits, _frame(GEOMETRY))
    top = class_logits.softmax(-1)[:, :-1].max(dim=0).indices
    assert torch.equal(grounded.masks, logits[top].sigmoid() > 0.5)
    single = torch.cat([class_logits[:, :1], class_logits[:, -1:]], dim=1)
    chosen = single.softmax(-1)[:, 0].argmax()
    assert torch.equal(referring(single, mask_logits, _frame(GEOMETRY)).mask, logits[chosen].sigmoid() > 0.5)


@pytest.fixture
def upsampled_counts(monkeypatch):
    """Number of masks per call of ``postprocess_masks`` inside the post-processing module."""
    counts: list[int] = []
    original = post.postprocess_masks

    def counting(logits, *args):
        counts.append(len(logits))
        return original(logits, *args)

    for module in (post, referring_module, gcg_module):
        monkeypatch.setattr(module, "postprocess_masks", counting)
    return counts


def test_only_masks_that_can_survive_are_upsampled(upsampled_counts):
    class_logits = _class_logits([[0.9], [0.7], [0.2], [0.1], [0.05]])
    mask_logits = _masks(*[(slice(i, i + 2), slice(0, 8)) for i in range(5)])
    prompt = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    prompt[0:2] = True
    panoptic(class_logits, mask_logits, FRAME, is_thing=[True], threshold=0.5)
    assert sum(upsampled_counts) == 2
    upsampled_counts.clear()
    instance(class_logits, mask_logits, FRAME, threshold=0.5)
    assert sum(upsampled_counts) == 2
    upsampled_counts.clear()
    # Scores of queries 2-4 are bounded by their probabilities, below the best score 0.9.
    assert interactive(class_logits, mask_logits, FRAME, prompt).query == 0
    assert sum(upsampled_counts) == 2
    upsampled_counts.clear()
    grounded_conversation(_class_logits([[0.5, 0.4]] + [[0.01, 0.01]] * 4), mask_logits, FRAME)
    assert upsampled_counts == [1]


# ------------------------------------------------------------------------------------------ helpers
def test_mask_to_box_is_exclusive_and_zero_for_empty_masks():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert mask_to_box(masks).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    assert mask_to_box(masks[0]).tolist() == [2.0, 1.0, 5.0, 3.0]


def test_box_iou():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(1 / 7)
    assert iou[0, 0].item() == 1.0 and iou[2, 2].item() == 0.0 and not math.isnan(iou.sum().item())


def test_restore_prompt_masks_crops_then_takes_nearest_pixels():
    canvas = torch.zeros(1, 16, 16)
    canvas[0, 4:8, 2:6] = 1  # inside the 12 x 8 scaled image, upscaled 2x from 6 x 4
    restored = restore_prompt_masks(canvas, Frame((6, 4), (12, 8), 16))
    assert restored.dtype == torch.bool and restored.shape == (1, 6, 4)
    assert torch.nonzero(restored[0]).tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="mask_logits"):
        semantic(torch.zeros(3, 2), torch.zeros(2, 8, 8), FRAME)
    with pytest.raises(ValueError, match="is_thing"):
        panoptic(torch.zeros(3, 3), torch.zeros(3, 8, 8), FRAME, is_thing=[True])
    with pytest.raises(ValueError, match="prompt_mask"):
        interactive(torch.zeros(3, 2), torch.zeros(3, 8, 8), FRAME, torch.zeros(4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ fixtures
def _full_logits_of_selected(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Final class logits (all queries) and mask logits with only the stored full-size queries filled."""
    class_logits = tensors["decoder_class_logits_all_stages"][-1, 0]
    mask_logits = torch.full((class_logits.shape[0], 128, 128), float("nan"))
    mask_logits[tensors["selected_queries"]] = tensors["decoder_mask_logits_final_selected_queries"][0]
    return class_logits, mask_logits


@pytest.mark.parity
@pytest.mark.parametrize(
    "name",
    fixture_params("tasks", task="refseg", required_tensor="selected_queries")
    + fixture_params("tasks", task="reaseg", required_tensor="selected_queries"),
)
def test_referring_reproduces_the_official_map(name):
    # Uses the official logits; the chosen query is one of the stored full-resolution ones (the NaN
    # filler of the others would poison any result that touched them).
    meta, tensors = load(name)
    key = meta["task"]
    class_logits, mask_logits = _full_logits_of_selected(tensors)
    frame = Frame(tuple(meta["image_size_hw"]), tuple(meta["sam_scaled_size_hw"]), 1024)
    result = referring(class_logits, mask_logits, frame)
    assert torch.equal(result.label_map(), tensors[f"post_{key}_segmentation"].long())
    assert round(result.score, 6) == meta["postprocess"][key]["segments_info"]["score"]


@pytest.mark.parity
@pytest.mark.parametrize(
    "name", fixture_params("tasks", task="intseg", required_tensor="vprompt_masks_1024_nonzero")
)
def test_restored_prompt_mask_matches_the_official_interactive_prompt(name):
    meta, tensors = load(name)
    coordinates = tensors["vprompt_masks_1024_nonzero"].long()
    canvas = torch.zeros(int(coordinates[:, 0].max()) + 1, 1024, 1024)
    canvas[coordinates[:, 0], coordinates[:, 1], coordinates[:, 2]] = 1
    frame = Frame(tuple(meta["image_size_hw"]), tuple(meta["sam_scaled_size_hw"]), 1024)
    restored = restore_prompt_masks(canvas, frame)
    assert torch.equal(torch.nonzero(restored), tensors["vprompt_masks_orig_nonzero"].long())
