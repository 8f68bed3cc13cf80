"""IoU-family metrics on hand-built cases with known answers, and against a brute-force computation."""

import numpy as np
import pytest

from xsam.eval.metrics.iou import MaskIoUMetric, SemanticMetric


def test_semantic_metrics_on_a_hand_built_case():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    metric = SemanticMetric(num_classes=3)
    metric.update(pred, gt)
    result = metric.compute()
    # class 0: gt 4 px, pred 4 px (valid), tp 3 -> IoU 3/5; class 1: gt 3, pred 3, tp 2 -> 2/4; class 2 absent
    assert result["miou"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert result["pacc"] == pytest.approx(5 / 7)
    assert result["macc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert result["fwiou"] == pytest.approx(4 / 7 * 3 / 5 + 3 / 7 * 2 / 4)


def test_semantic_miou_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    metric = SemanticMetric(num_classes=5)
    totals = np.zeros((5, 2))
    for _ in range(4):
        gt = rng.integers(0, 5, (16, 16))
        gt[rng.random((16, 16)) < 0.1] = 255
        pred = rng.integers(0, 5, (16, 16))
        metric.update(pred, gt)
        valid = gt != 255
        for c in range(5):
            totals[c, 0] += ((pred == c) & (gt == c) & valid).sum()
            totals[c, 1] += (((pred == c) | (gt == c)) & valid).sum()
    assert metric.compute()["miou"] == pytest.approx(np.mean(totals[:, 0] / totals[:, 1]))


def test_semantic_metric_rejects_bad_labels():
    metric = SemanticMetric(num_classes=2)
    with pytest.raises(ValueError, match="ground-truth labels"):
        metric.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((2, 2)), np.zeros((3, 2)))


def test_ciou_giou_with_ignore_and_empty_union():
    metric = MaskIoUMetric()
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 px, intersection 4
    metric.update(pred, gt)  # IoU 4/6
    ignore = np.zeros((4, 4), bool)
    ignore[:, 2:] = True  # excluding the extra column makes it perfect
    metric.update(pred, gt, ignore)  # IoU 4/4
    metric.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool))  # empty union: 1.0
    result = metric.compute()
    assert result["ciou"] == pytest.approx((4 + 4) / (6 + 4))
    assert result["giou"] == pytest.approx((4 / 6 + 1 + 1) / 3)


def test_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 4, (6, 7)), rng.integers(0, 4, (6, 7))) for _ in range(4)]
    whole, first, second = SemanticMetric(4), SemanticMetric(4), SemanticMetric(4)
    for index, (prediction, truth) in enumerate(pairs):
        whole.update(prediction, truth)
        (first if index < 2 else second).update(prediction, truth)
    first.merge(second)
    assert first.compute() == whole.compute()
    with pytest.raises(ValueError, match="cannot merge 3 classes into 4"):
        first.merge(SemanticMetric(3))

    masks = [(rng.random((5, 5)) > 0.5, rng.random((5, 5)) > 0.5) for _ in range(4)]
    whole_iou, first_iou, second_iou = MaskIoUMetric(), MaskIoUMetric(), MaskIoUMetric()
    for index, (prediction, truth) in enumerate(masks):
        whole_iou.update(prediction, truth)
        (first_iou if index < 2 else second_iou).update(prediction, truth)
    first_iou.merge(second_iou)
    assert first_iou.compute() == pytest.approx(whole_iou.compute())
    assert first_iou.per_sample == whole_iou.per_sample
