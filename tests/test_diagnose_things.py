"""scripts/diagnose_things.py: per-shape segmentation and classification figures of a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from script_support import load_script
from xsam import XSamModel, XSamPredictor


@pytest.fixture(scope="module")
def diagnose():
    return load_script("diagnose_things")


@pytest.fixture(scope="module")
def predictor() -> XSamPredictor:
    return XSamPredictor(XSamModel.from_pretrained("default"))


def test_every_shape_gets_its_best_query_figures(diagnose, predictor, small_world: Path) -> None:
    stats = diagnose.thing_statistics(predictor, small_world, "test", images=3)
    instances = json.loads((small_world / "instances/instances_test.json").read_text())
    first = {image["id"] for image in instances["images"][:3]}
    assert len(stats.shapes) == sum(a["image_id"] in first for a in instances["annotations"])
    assert stats.names[: stats.num_things] == [c["name"] for c in instances["categories"]]
    iou, right, p_shape, p_max, p_background = stats.shapes.T
    assert float(iou.mean()) > 0.4  # the bundled model segments shapes (0.75 on the seed-0 test split)
    assert set(right.tolist()) <= {0.0, 1.0}
    assert bool((p_shape <= p_max + 1e-6).all()) and bool((p_max + p_background <= 1 + 1e-6).all())
    assert stats.cosine.shape == (len(stats.names), len(stats.names))
    torch.testing.assert_close(stats.cosine.diagonal(), torch.ones(len(stats.names)))
    assert "pairwise cosine" in stats.summary()


def test_closed_set_needs_a_stage_1_model(diagnose, predictor, small_world: Path) -> None:
    with pytest.raises(ValueError, match="closed-set head"):
        diagnose.thing_statistics(predictor, small_world, "test", images=1, closed_set=True)
