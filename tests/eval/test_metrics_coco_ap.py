"""COCO mask AP on hand-built cases whose COCO AP is worked out by hand (IoU thresholds .50:.05:.95,
101-point interpolated precision), plus subset evaluation, merging and input formats."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from xsam.eval.metrics.coco_ap import MaskAPMetric, score_instance_files
from xsam.processing import encode_rle

SIZE = (20, 20)


def box(top: int, left: int, bottom: int, right: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def coco_ground_truth(masks_by_image: dict, size: tuple[int, int] = SIZE, category_id: int = 1) -> dict:
    images = [{"id": image_id, "height": size[0], "width": size[1]} for image_id in masks_by_image]
    annotations = [
        {"image_id": image_id, "category_id": category_id, "segmentation": encode_rle(mask), "iscrowd": 0}
        for image_id, masks in masks_by_image.items()
        for mask in masks
    ]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
        annotation["area"] = int(mask_utils.area(annotation["segmentation"]))
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}


def add_one(metric: MaskAPMetric, image_id, mask: np.ndarray, score: float) -> None:
    metric.add(image_id, mask[None], [score], [1])


# one false positive ranked between two hits (two images, one object each): recall 1/2, 1/2, 1 with
# precision 1, 1/2, 2/3; interpolated precision is 1 up to recall 0.50 (51 of the 101 recall points)
# and 2/3 above it (50 points)
INTERLEAVED_AP = (51 * 1.0 + 50 * 2 / 3) / 101
SQUARE, OTHER_SQUARE = box(0, 0, 10, 10), box(10, 10, 20, 20)


def interleaved_case(first, second) -> list:
    return [(first, SQUARE, 0.9), (first, OTHER_SQUARE, 0.8), (second, SQUARE, 0.7)]


def test_perfect_prediction_scores_one_and_empty_size_buckets_stay_minus_one():
    metric = MaskAPMetric(coco_ground_truth({1: [SQUARE]}))
    add_one(metric, 1, SQUARE, 0.3)
    result = metric.compute()
    # a 10x10 object is "small" (area < 32^2): the medium and large buckets have no ground truth
    assert result == pytest.approx({"ap": 1, "ap50": 1, "ap75": 1, "aps": 1, "apm": -1, "apl": -1})


def test_iou_of_0_6_counts_at_three_of_ten_thresholds():
    ground_truth, prediction = box(0, 0, 5, 8), box(0, 2, 5, 10)  # intersection 30, union 50
    metric = MaskAPMetric(coco_ground_truth({1: [ground_truth]}))
    add_one(metric, 1, prediction, 0.9)
    result = metric.compute()
    # a hit at IoU >= t for t = 0.50, 0.55, 0.60 and a miss at the 7 higher thresholds
    assert result["ap50"] == pytest.approx(1.0)
    assert result["ap75"] == 0.0
    assert result["ap"] == pytest.approx(0.3)


@pytest.mark.parametrize(("hit_score", "miss_score", "expected"), [(0.9, 0.8, 1.0), (0.8, 0.9, 0.5)])
def test_ranking_a_false_positive_first_halves_ap(hit_score, miss_score, expected):
    metric = MaskAPMetric(coco_ground_truth({1: [SQUARE]}))
    metric.add(1, np.stack([SQUARE, OTHER_SQUARE]), [hit_score, miss_score], [1, 1])
    # false positive first: precision 0 then 1/2 at recall 1, interpolated to 1/2 at every recall point
    assert metric.compute()["ap"] == pytest.approx(expected)


@pytest.mark.parametrize("image_ids", [(1, 2), ("img_a", "img_b"), (7, "img_b")], ids=["int", "str", "mixed"])
def test_false_positive_between_hits_uses_101_point_interpolation(image_ids):
    first, second = image_ids
    metric = MaskAPMetric(coco_ground_truth({first: [SQUARE], second: [SQUARE]}))
    for image_id, mask, score in interleaved_case(first, second):
        add_one(metric, image_id, mask, score)
    result = metric.compute()
    assert result["ap50"] == pytest.approx(INTERLEAVED_AP)
    assert result["ap"] == pytest.approx(INTERLEAVED_AP)


def test_merge_equals_a_single_process():
    ground_truth = coco_ground_truth({1: [SQUARE], 2: [SQUARE], 3: [OTHER_SQUARE]})
    single, first, second = (MaskAPMetric(ground_truth) for _ in range(3))
    for image_id, mask, score in interleaved_case(1, 2):
        add_one(single, image_id, mask, score)
        add_one(first if image_id == 1 else second, image_id, mask, score)
    for metric in (single, second):
        metric.add(3, np.zeros((0, *SIZE), bool), [], [])  # evaluated, nothing found
    first.merge(second)
    assert first.evaluated_image_ids == {1, 2, 3}
    assert first.compute() == single.compute()
    # image 3's missed object counts: recall tops out at 2/3
    assert single.compute()["ap50"] < INTERLEAVED_AP


def test_only_evaluated_images_are_scored(tmp_path):
    ground_truth = coco_ground_truth({1: [SQUARE], 2: [SQUARE]})
    metric = MaskAPMetric(ground_truth)
    add_one(metric, 1, SQUARE, 0.9)
    assert metric.compute()["ap"] == pytest.approx(1.0)  # image 2 was never evaluated
    metric.add(2, np.zeros((0, *SIZE), bool), [], [])  # evaluated with no prediction: a miss
    assert metric.compute()["ap"] == pytest.approx(51 / 101)

    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(ground_truth))
    results = [{"image_id": 1, "category_id": 1, "segmentation": encode_rle(SQUARE), "score": 0.9}]
    pred_path.write_text(json.dumps(results))
    assert score_instance_files(gt_path, pred_path)["ap"] == pytest.approx(1.0)
    assert score_instance_files(gt_path, pred_path, image_ids="all")["ap"] == pytest.approx(51 / 101)


def test_no_predictions_give_zeros():
    metric = MaskAPMetric(coco_ground_truth({1: [SQUARE]}))
    assert set(metric.compute().values()) == {0.0}
    metric.add(1, np.zeros((0, *SIZE), bool), [], [])
    assert metric.evaluated_image_ids == {1}
    assert set(metric.compute().values()) == {0.0}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a 0 run."""
    pixels = mask.flatten(order="F").astype(np.int8)
    boundaries = np.flatnonzero(np.diff(pixels)) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [pixels.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if pixels[0] else []) + runs}


def test_polygon_and_uncompressed_rle_ground_truth_without_area():
    polygon = [[2.0, 2.0, 12.0, 2.0, 12.0, 9.0, 2.0, 9.0]]
    polygon_mask = mask_utils.decode(mask_utils.frPyObjects(polygon, *SIZE)[0]).astype(bool)
    assert uncompressed_rle(OTHER_SQUARE)["counts"][:2] == [10 * 20 + 10, 10]  # hand-checked layout
    ground_truth = {
        "images": [{"id": 1, "height": SIZE[0], "width": SIZE[1]}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 1, "segmentation": polygon},
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": uncompressed_rle(OTHER_SQUARE)},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    metric = MaskAPMetric(ground_truth)
    metric.add(1, np.stack([polygon_mask, OTHER_SQUARE]), [0.9, 0.8], [1, 1])
    # both found at IoU 1 (a ground-truth id of 0 must not read as "unmatched" inside COCOeval)
    assert metric.compute()["ap"] == pytest.approx(1.0)


def test_result_bbox_is_dropped_so_areas_come_from_masks():
    size = (100, 230)
    large, elsewhere = box(0, 0, 100, 100, size), box(0, 120, 100, 220, size)
    metric = MaskAPMetric(coco_ground_truth({1: [large]}, size=size))
    metric.add_results(
        [
            {"image_id": 1, "category_id": 1, "segmentation": encode_rle(m), "score": s, "bbox": [0, 0, 1, 1]}
            for m, s in [(elsewhere, 0.9), (large, 0.5)]
        ]
    )
    result = metric.compute()
    # the top-ranked false positive is a large mask; with the 1-pixel box's area it would be ignored
    # in the large bucket and AP-large would read 1.0
    assert result["ap"] == pytest.approx(0.5)
    assert result["apl"] == pytest.approx(0.5)


def test_single_category_ignores_categories_and_scores():
    ground_truth = coco_ground_truth({1: [SQUARE]}, category_id=3)
    ground_truth["categories"] = [{"id": 3, "name": "cat"}]
    metric = MaskAPMetric(ground_truth, single_category=True)
    metric.add(1, np.stack([OTHER_SQUARE, SQUARE]), [0.9, 0.1], [8, 9])
    # every score is 1.0, so the order of addition decides: miss then hit, as with a higher-scored miss
    assert metric.compute()["ap50"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="category id 8"):
        MaskAPMetric(ground_truth).add(1, OTHER_SQUARE[None], [0.9], [8])


def test_bad_inputs_are_clear_errors(tmp_path):
    metric = MaskAPMetric(coco_ground_truth({1: [SQUARE]}))
    with pytest.raises(ValueError, match="image id '1' is not in the ground truth"):
        add_one(metric, "1", SQUARE, 0.5)
    with pytest.raises(ValueError, match=r"\(20, 20\)"):
        add_one(metric, 1, np.zeros((5, 5), bool), 0.5)
    with pytest.raises(FileNotFoundError, match="not found"):
        MaskAPMetric.from_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        MaskAPMetric.from_json(tmp_path / "broken.json")
