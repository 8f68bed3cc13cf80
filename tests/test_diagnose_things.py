"""scripts/diagnose_things.py: per-shape segmentation and classification figures of a trained model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from xsam import XSamModel, XSamPredictor
from xsam.data.synthetic import generate_world

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "diagnose_things.py"


@pytest.fixture(scope="module")
def diagnose():
    spec = importlib.util.spec_from_file_location("diagnose_things", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diagnose") / "world"
    generate_world(root, seed=3, images=6, image_size=128)
    return root


def test_every_shape_gets_its_best_query_figures(diagnose, world: Path) -> None:
    predictor = XSamPredictor(XSamModel.from_pretrained("default"))
    stats = diagnose.thing_statistics(predictor, world, "test", images=3)
    instances = json.loads((world / "instances/instances_test.json").read_text())
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


def test_closed_set_needs_a_stage_1_model(diagnose, world: Path) -> None:
    predictor = XSamPredictor(XSamModel.from_pretrained("default"))
    with pytest.raises(ValueError, match="closed-set head"):
        diagnose.thing_statistics(predictor, world, "test", images=1, closed_set=True)
