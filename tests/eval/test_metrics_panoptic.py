"""Panoptic quality against torchmetrics where both definitions agree, hand-built cases for
panopticapi's rules (VOID, crowd, the strict 0.5 threshold, no stuff merging), and file-level scoring."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.detection import PanopticQuality

from xsam.data.formats.coco import id_to_rgb
from xsam.eval.metrics.iou import SemanticMetric
from xsam.eval.metrics.panoptic import (
    PanopticQualityMetric,
    score_panoptic_files,
    score_semantic_files,
)

THINGS, STUFFS = (1, 2, 3), (4, 5)
CATEGORIES = {**dict.fromkeys(THINGS, True), **dict.fromkeys(STUFFS, False)}


def segments(ids, *, crowd=()):
    """``segments_info`` for ids encoded as ``10 * category + instance``."""
    return [{"id": i, "category_id": i // 10, "iscrowd": int(i in crowd)} for i in ids]


def listed(id_map):
    return segments(int(i) for i in np.unique(id_map) if i != 0)


def random_pair(rng, size=24):
    """A GT map with VOID (id 0), things with instances 1-2 and one segment per stuff class, and a fully
    labelled prediction made by overwriting random 2x2 blocks of the GT (VOID always overwritten)."""
    categories = rng.choice([0, *THINGS, *STUFFS], size=(size // 4, size // 4))
    instances = np.where(np.isin(categories, THINGS), rng.integers(1, 3, categories.shape), 0)
    gt = np.kron(10 * categories + instances, np.ones((4, 4), dtype=np.int64))
    blocks = rng.random((size // 2, size // 2)) < 0.3
    replacement = 10 * rng.choice([*THINGS, *STUFFS], size=blocks.shape)
    replacement += np.where(np.isin(replacement // 10, THINGS), rng.integers(1, 3, blocks.shape), 0)
    pred = np.where(np.kron(blocks, np.ones((2, 2), dtype=bool)), np.kron(replacement, np.ones((2, 2))), gt)
    pred = pred.astype(np.int64)
    fill = 10 * rng.choice([*THINGS, *STUFFS])
    pred[pred == 0] = fill + (1 if fill // 10 in THINGS else 0)
    return pred, gt


def as_torchmetrics(id_map):
    """``(1, H, W, 2)`` (category, instance); GT VOID becomes category 0, unknown to torchmetrics = void."""
    return torch.from_numpy(np.stack([id_map // 10, id_map % 10], axis=-1))[None]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_torchmetrics_when_no_stuff_merge_can_happen(seed):
    rng = np.random.default_rng(seed)
    ours = PanopticQualityMetric(CATEGORIES)
    # The prediction has no VOID, so torchmetrics' extra rules (GT pixels on predicted VOID leave the
    # union; GT mostly covered by predicted VOID is not a FN) never apply, and there is no crowd.
    reference = PanopticQuality(things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True)
    per_class = PanopticQuality(
        things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True, return_per_class=True
    )
    for _ in range(3):
        pred, gt = random_pair(rng)
        ours.update(pred, listed(pred), gt, listed(gt))
        reference.update(as_torchmetrics(pred), as_torchmetrics(gt))
        per_class.update(as_torchmetrics(pred), as_torchmetrics(gt))
    result = ours.compute()
    assert 0 < result["pq"] < result["sq"] < 1 and result["rq"] < 1  # not a vacuous comparison
    pq, sq, rq = reference.compute().tolist()
    assert (result["pq"], result["sq"], result["rq"]) == pytest.approx((pq, sq, rq), abs=1e-6)
    # torchmetrics orders classes things first, then stuff, ascending within each: like CATEGORIES
    expected = dict(zip(CATEGORIES, per_class.compute().tolist(), strict=True))
    for category, quality in ours.per_category().items():
        assert [quality["pq"], quality["sq"], quality["rq"]] == pytest.approx(expected[category], abs=1e-6)
    thing_pq = [q["pq"] for c, q in ours.per_category().items() if CATEGORIES[c]]
    assert result["pq_th"] == pytest.approx(np.mean(thing_pq))


def test_stuff_segments_are_not_merged_unlike_torchmetrics():
    gt = np.full((4, 4), 40)  # one stuff segment of class 4 over the whole image
    pred = np.full((4, 4), 41)
    pred[:, 3] = 42  # the class predicted as two segments: 12 px and 4 px
    ours = PanopticQualityMetric(CATEGORIES)
    ours.update(pred, segments([41, 42]), gt, segments([40]))
    # panopticapi: 41 matches with IoU 12/16; 42 (IoU 4/16) is a FP -> PQ = 0.75 / (1 + 0.5)
    assert ours.compute()["pq"] == pytest.approx(0.5)
    assert ours.per_category()[4] == pytest.approx({"pq": 0.5, "sq": 0.75, "rq": 2 / 3})
    reference = PanopticQuality(things=set(THINGS), stuffs=set(STUFFS))
    reference.update(as_torchmetrics(pred), as_torchmetrics(gt))  # merges 41 and 42 into one segment
    assert reference.compute().item() == pytest.approx(1.0)


def test_perfect_prediction_scores_one():
    _, gt = random_pair(np.random.default_rng(5))
    metric = PanopticQualityMetric(CATEGORIES)
    metric.update(gt, listed(gt), gt, listed(gt))
    values = metric.compute()
    assert {k: values[k] for k in ("pq", "sq", "rq", "pq_th", "pq_st")} == pytest.approx(
        dict.fromkeys(("pq", "sq", "rq", "pq_th", "pq_st"), 1.0)
    )
    present = {int(i) // 10 for i in np.unique(gt) if i}
    assert values["n"] == len(present) and values["n_th"] == len(present & set(THINGS))


def one_image(pred, pred_ids, gt, gt_ids, *, crowd=()):
    metric = PanopticQualityMetric(CATEGORIES)
    metric.update(np.array(pred), segments(pred_ids), np.array(gt), segments(gt_ids, crowd=crowd))
    return metric


def test_iou_of_exactly_one_half_is_not_a_match():
    gt = [[11, 11, 11, 11]]
    half = one_image([[11, 11, 0, 0]], [11], gt, [11])  # IoU 2/4: one FN and one FP
    assert half.per_category() == {1: {"pq": 0.0, "sq": 0.0, "rq": 0.0}}
    more = one_image([[11, 11, 11, 0]], [11], gt, [11])  # IoU 3/4: a match
    assert more.per_category()[1] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})


def test_predicted_pixels_on_gt_void_leave_the_union_but_gt_pixels_on_predicted_void_do_not():
    # 4 GT px of segment 11, then 2 GT VOID px, all covered by the prediction: IoU 4 / (6 + 4 - 4 - 2)
    covered = one_image([[11, 11, 11, 11, 11, 11]], [11], [[11, 11, 11, 11, 0, 0]], [11])
    assert covered.compute()["sq"] == pytest.approx(1.0)
    # a GT pixel under predicted VOID still counts in the union: IoU 3 / 4
    uncovered = one_image([[11, 11, 11, 0, 11, 11]], [11], [[11, 11, 11, 11, 0, 0]], [11])
    assert uncovered.compute()["sq"] == pytest.approx(0.75)


def test_prediction_mostly_on_void_or_same_class_crowd_is_ignored_not_false_positive():
    gt = [[11, 11, 11, 11, 0, 0, 12, 12, 21, 21]]  # 11 is a non-crowd person, 12 a person crowd
    pred = [[11, 11, 11, 11, 13, 13, 13, 13, 13, 22]]  # 13: 2 px VOID + 2 px crowd + 1 px other of 5
    ignored = one_image(pred, [11, 13, 22], gt, [11, 12, 21], crowd=[12])
    assert ignored.per_category()[1] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0})
    # The same pixels called "bicycle" (category 2) get no help from the person crowd: 2 of 5 px
    # ignored is not more than half, so 23 is a FP and costs category 2 (already 0: 22 vs 21 has IoU
    # 1/2) nothing, but category 1 stays perfect; 13 ignored is what keeps category 1 at 1.0 above.
    pred = [[11, 11, 11, 11, 23, 23, 23, 23, 23, 22]]
    counted = one_image(pred, [11, 23, 22], gt, [11, 12, 21], crowd=[12])
    assert counted.per_category()[1]["pq"] == pytest.approx(1.0)
    assert counted.per_category()[2] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})


def test_crowd_segments_are_never_matched_nor_false_negatives():
    metric = one_image([[11, 11, 12, 12]], [11, 12], [[11, 11, 12, 12]], [11, 12], crowd=[12])
    assert metric.per_category()[1] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0})


def test_only_the_last_listed_crowd_of_a_category_excuses_predictions_as_in_panopticapi():
    gt = [[12, 12, 13, 13]]  # two person crowds, listed 12 then 13
    on_first = one_image([[11, 11, 0, 0]], [11], gt, [12, 13], crowd=[12, 13])
    on_last = one_image([[0, 0, 11, 11]], [11], gt, [12, 13], crowd=[12, 13])
    assert on_first.compute()["n"] == 1 and on_first.per_category()[1]["pq"] == 0.0  # a FP
    assert on_last.compute()["n"] == 0  # ignored: nothing left to score


def test_things_and_stuff_averages_and_unseen_categories():
    # thing 1 perfect, stuff 4 missed (FN), stuff 5 only predicted (FP); categories 2 and 3 unseen
    metric = one_image([[11, 11, 50, 50]], [11, 50], [[11, 11, 40, 40]], [11, 40])
    result = metric.compute()
    assert result == pytest.approx({
        "pq": 1 / 3, "sq": 1 / 3, "rq": 1 / 3, "n": 3,
        "pq_th": 1.0, "sq_th": 1.0, "rq_th": 1.0, "n_th": 1,
        "pq_st": 0.0, "sq_st": 0.0, "rq_st": 0.0, "n_st": 2,
    })  # fmt: skip
    assert set(metric.per_category()) == {1, 4, 5}


def test_empty_metric_gives_zeros():
    result = PanopticQualityMetric(CATEGORIES).compute()
    assert result["pq"] == 0.0 and result["n"] == 0


def test_merge_of_two_halves_equals_one_pass():
    rng = np.random.default_rng(7)
    pairs = [random_pair(rng) for _ in range(4)]
    whole, first, second = (PanopticQualityMetric(CATEGORIES) for _ in range(3))
    for index, (pred, gt) in enumerate(pairs):
        whole.update(pred, listed(pred), gt, listed(gt))
        (first if index < 2 else second).update(pred, listed(pred), gt, listed(gt))
    first.merge(second)
    assert first.compute() == pytest.approx(whole.compute())
    assert first.per_category().keys() == whole.per_category().keys()
    for category, quality in whole.per_category().items():
        assert first.per_category()[category] == pytest.approx(quality)
    with pytest.raises(ValueError, match="different categories"):
        first.merge(PanopticQualityMetric({1: True}))


def test_segment_list_errors():
    gt = np.array([[11, 11, 0, 0]])
    metric = PanopticQualityMetric(CATEGORIES)
    with pytest.raises(ValueError, match="unknown category_id 9"):
        metric.update(np.array([[91, 0, 0, 0]]), segments([91]), gt, segments([11]))
    with pytest.raises(ValueError, match=r"ids \[12\] .* are in the map but not listed"):
        metric.update(np.array([[11, 12, 0, 0]]), segments([11]), gt, segments([11]))
    metric.update(np.array([[11, 11, 0, 0]]), segments([11, 31]), gt, segments([11]))  # 31 absent: fine
    assert metric.per_category() == {1: pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0})}


def write_panoptic(directory, name, ids):
    directory.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(np.array(ids))).save(directory / name)


def panoptic_files(tmp_path, predicted_images):
    gt_maps = {1: [[11, 11, 40, 40, 40, 40]], 2: [[21, 21, 0, 40, 40, 40]]}
    pred_maps = {1: [[11, 11, 40, 40, 40, 40]], 2: [[21, 21, 40, 40, 40, 0]]}
    gt = {"annotations": [], "categories": [{"id": c, "isthing": int(t)} for c, t in CATEGORIES.items()]}
    pred = {"annotations": []}
    for image_id, ids in gt_maps.items():
        write_panoptic(tmp_path / "gt", f"{image_id}.png", ids)
        gt["annotations"].append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": listed(ids)}
        )
    for image_id in predicted_images:
        ids = pred_maps.get(image_id, [[0, 0, 0, 0]])
        write_panoptic(tmp_path / "pred", f"p{image_id}.png", ids)
        pred["annotations"].append(
            {"image_id": image_id, "file_name": f"p{image_id}.png", "segments_info": listed(ids)}
        )
    for name, data in (("gt.json", gt), ("pred.json", pred)):
        (tmp_path / name).write_text(json.dumps(data))
    return tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred"


def test_score_panoptic_files(tmp_path):
    result = score_panoptic_files(*panoptic_files(tmp_path, [2, 1]))
    # image 1 is perfect; in image 2, 21 is perfect and predicted 40 (3 px, one on VOID) meets GT 40
    # (3 px) on 2 px: IoU 2 / (3 + 3 - 2 - 1). Category 4: two TPs with IoU 1 and 2/3.
    assert result["pq"] == pytest.approx((1 + 1 + 5 / 6) / 3)
    assert result["pq_th"] == pytest.approx(1.0) and result["n_st"] == 1


def test_score_panoptic_files_names_missing_and_extra_images(tmp_path):
    with pytest.raises(ValueError, match=r"no prediction for ground-truth image ids \[2\]"):
        score_panoptic_files(*panoptic_files(tmp_path / "a", [1]))
    with pytest.raises(ValueError, match=r"absent from the ground truth: \[7\]"):
        score_panoptic_files(*panoptic_files(tmp_path / "b", [1, 2, 7]))


def write_labels(directory, name, labels):
    directory.mkdir(exist_ok=True)
    Image.fromarray(np.array(labels, dtype=np.uint8), mode="L").save(directory / name)


def test_score_semantic_files(tmp_path):
    images = {
        "a.png": ([[0, 1, 2, 255]], [[0, 1, 1, 0]]),
        "b.png": ([[2, 2, 0, 0]], [[2, 0, 0, 0]]),
    }
    expected = SemanticMetric(num_classes=3)
    for name, (gt, pred) in images.items():
        write_labels(tmp_path / "gt", name, gt)
        write_labels(tmp_path / "pred", name, pred)
        expected.update(np.array(pred), np.array(gt))
    assert score_semantic_files(tmp_path / "gt", tmp_path / "pred") == pytest.approx(expected.compute())
    wider = score_semantic_files(tmp_path / "gt", tmp_path / "pred", num_classes=5)
    assert wider == pytest.approx(expected.compute())  # classes 3 and 4 never occur: left out of means
    write_labels(tmp_path / "gt", "c.png", [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"no prediction for ground-truth files \['c.png'\]"):
        score_semantic_files(tmp_path / "gt", tmp_path / "pred")
