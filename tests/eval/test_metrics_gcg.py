"""GCG metrics: the greedy pairing mIoU on hand-built masks, the caption metrics against hand-computed
CIDEr-D, and the file-level score on the GranD-f-format fixtures (string image ids)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from locations import FORMATS
from xsam.eval.metrics import gcg
from xsam.eval.metrics.caption import caption_scores
from xsam.eval.metrics.gcg import GCGMetric, greedy_pairing_miou, score_gcg_files

GCG = FORMATS / "gcg"
MASK_GT, CAPTION_GT = GCG / "val_gcg_coco_mask_gt.json", GCG / "val_gcg_coco_caption_gt.json"

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer and METEOR need a Java runtime"
)


def strip(columns: range, width: int = 20) -> np.ndarray:
    """A ``(1, width)`` mask covering ``columns``."""
    mask = np.zeros((1, width), dtype=bool)
    mask[0, list(columns)] = True
    return mask


def test_greedy_pairing_takes_the_largest_iou_first_not_the_best_assignment():
    ground_truth = np.stack([strip(range(0, 10)), strip(range(10, 20))])
    predicted = np.stack([strip(range(2, 15)), strip(range(0, 5))])
    # IoUs: p0-g0 8/15, p0-g1 5/18, p1-g0 5/10, p1-g1 0. Greedy pairs p0-g0 and then stops (only 0 is
    # left), so 8/15; a Hungarian assignment would pair p0-g1 and p1-g0 for (5/18 + 1/2) / 2.
    assert greedy_pairing_miou(predicted, ground_truth) == pytest.approx(8 / 15)


def test_greedy_pairing_edge_cases():
    ground_truth = np.stack([strip(range(0, 10))])
    empty = np.zeros((0, 1, 20), dtype=bool)
    assert greedy_pairing_miou(empty, ground_truth) == 0.0
    assert greedy_pairing_miou(ground_truth, empty) == 0.0
    assert greedy_pairing_miou(np.stack([strip(range(10, 20))]), ground_truth) == 0.0  # disjoint
    # extra predictions stay unpaired and do not lower the mean of the paired IoUs
    extra = np.stack([strip(range(12, 20)), strip(range(0, 10)), strip(range(0, 5))])
    assert greedy_pairing_miou(extra, ground_truth) == pytest.approx(1.0)
    # two ground truths, one found at IoU 1/2: the missed one is unpaired, not a 0 in the mean
    two = np.stack([strip(range(0, 10)), strip(range(10, 20))])
    assert greedy_pairing_miou(np.stack([strip(range(0, 5))]), two) == pytest.approx(0.5)


def test_caption_scores_needs_matching_keys_and_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java runtime"):
        caption_scores({1: ["a cat"]}, {1: "a cat"})
    with pytest.raises(ValueError, match=r"no candidate for \[2\], no reference for \['x'\]"):
        caption_scores({1: ["a cat"], 2: ["a dog"]}, {1: "a cat", "x": "a bird"})


REFERENCES = {"a": ["Red cat sits quietly."], "b": ["Blue kite flies HIGH"]}


@needs_java
def test_identical_captions_score_cider_10_and_meteor_1():
    # disjoint vocabularies: every n-gram is in one image's references, so every n-gram weight is
    # log(2) and each image's four n-gram cosines are 1; CIDEr-D = 10 x their mean, no length penalty
    result = caption_scores(REFERENCES, {"a": "red cat sits quietly", "b": "Blue kite flies high."})
    assert result["cider"] == pytest.approx(10.0)
    # METEOR is at most 1; an exact match is one chunk, so any fragmentation penalty is tiny
    assert 0.99 <= result["meteor"] <= 1.0

    partial = caption_scores(REFERENCES, {"a": "red cat sits outside", "b": "blue kite flies high"})
    # image a: 1- to 4-gram cosines 3/4, 2/3, 1/2, 0 (equal weights, equal lengths) -> 10 x 23/48;
    # image b is exact (10); the corpus score is their mean
    assert partial["cider"] == pytest.approx((10 * 23 / 48 + 10) / 2)
    assert partial["meteor"] < result["meteor"]


def grandf_prediction(drop: tuple[str, int] | None = None) -> list[dict]:
    """A prediction per fixture image made of its ground-truth caption and masks (one mask dropped)."""
    masks = json.loads(MASK_GT.read_text())
    captions = {a["image_id"]: a["caption"] for a in json.loads(CAPTION_GT.read_text())["annotations"]}
    predictions = []
    for image in masks["images"]:
        rles = [a["segmentation"] for a in masks["annotations"] if a["image_id"] == image["id"]]
        if drop is not None and drop[0] == image["id"]:
            del rles[drop[1]]
        predictions.append({"image_id": image["id"], "caption": captions[image["id"]], "masks": rles})
    return predictions


def write_predictions(tmp_path: Path, predictions: list[dict]) -> Path:
    path = tmp_path / "gcg_predictions.json"
    path.write_text(json.dumps(predictions))
    return path


@needs_java
def test_perfect_prediction_on_the_grandf_fixture(tmp_path):
    result = score_gcg_files(MASK_GT, CAPTION_GT, write_predictions(tmp_path, grandf_prediction()))
    assert result["ap50"] == pytest.approx(1.0)
    assert result["miou"] == pytest.approx(1.0)
    # "a" is in both images' references (weight 0) but every n-gram order keeps a non-zero weight
    assert result["cider"] == pytest.approx(10.0)
    assert 0.99 <= result["meteor"] <= 1.0


@pytest.fixture
def fixed_captions(monkeypatch):
    """Stand-in caption scores, for tests about the masks that should not need Java."""
    monkeypatch.setattr(gcg, "caption_scores", lambda references, candidates: {"meteor": 0.5, "cider": 2.0})


# three ground-truth masks, two found (all scores 1.0): precision 1 up to recall 2/3, which covers
# the 67 recall points 0.00 ... 0.66 of 101
TWO_OF_THREE_AP = 67 / 101


@pytest.mark.parametrize(
    ("drop", "miou"),
    [(("img_b", 0), 0.5), (("img_a", 1), 1.0)],
    ids=["img_b-only-mask", "img_a-second-mask"],
)
def test_dropped_mask_on_the_grandf_fixture(tmp_path, fixed_captions, drop, miou):
    # dropping img_b's only mask makes its mIoU 0; dropping one of img_a's two leaves its mIoU at 1,
    # since an unpaired ground truth does not enter the greedy mean
    predictions = write_predictions(tmp_path, grandf_prediction(drop))
    result = score_gcg_files(MASK_GT, CAPTION_GT, predictions)
    assert result == pytest.approx({"meteor": 0.5, "cider": 2.0, "ap50": TWO_OF_THREE_AP, "miou": miou})


def decoded(prediction: dict) -> np.ndarray:
    return np.stack([mask_utils.decode(rle).astype(bool) for rle in prediction["masks"]])


def test_gcg_metric_merge_equals_a_single_process(fixed_captions):
    mask_gt, caption_gt = json.loads(MASK_GT.read_text()), json.loads(CAPTION_GT.read_text())
    single, first, second = (GCGMetric(mask_gt, caption_gt) for _ in range(3))
    for prediction, part in zip(grandf_prediction(("img_b", 0)), (first, second), strict=True):
        masks = decoded(prediction) if prediction["masks"] else np.zeros((0, 24, 32), bool)
        single.update(prediction["image_id"], prediction["caption"], masks)
        part.update(prediction["image_id"], prediction["caption"], masks)
    first.merge(second)
    assert first.compute() == single.compute()
    with pytest.raises(ValueError, match="already scored"):
        single.update("img_a", "again", np.zeros((0, 24, 32), bool))
    with pytest.raises(ValueError, match="both metrics scored"):
        first.merge(single)


def test_gcg_files_must_cover_the_ground_truth_exactly(tmp_path):
    predictions = grandf_prediction()
    with pytest.raises(ValueError, match="without a prediction: 'img_b'"):
        score_gcg_files(MASK_GT, CAPTION_GT, write_predictions(tmp_path, predictions[:1]))
    stranger = {**predictions[0], "image_id": "img_z"}
    with pytest.raises(ValueError, match=r"not in the ground truth .*'img_z'"):
        score_gcg_files(MASK_GT, CAPTION_GT, write_predictions(tmp_path, [*predictions, stranger]))
