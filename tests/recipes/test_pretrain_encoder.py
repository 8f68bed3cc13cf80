"""recipes/default-model/pretrain_encoder.py: stage 0 of the default model (SAM encoder pretraining on
shape mosaics)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from script_support import load_script
from xsam import XSamConfig, XSamModel


@pytest.fixture(scope="module")
def pretrain():
    return load_script("pretrain_encoder")


def test_views_are_windows_around_each_shape_cut_at_random_offsets(pretrain, small_world: Path) -> None:
    views = pretrain.shape_views(small_world, "train")
    annotations = json.loads((small_world / "instances/instances_train.json").read_text())["annotations"]
    assert len(views) == len(annotations)
    span, cell = pretrain.SPAN, pretrain.CELL
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for view in views:
        rgb, mask, label = view
        assert rgb.shape == (3, span, span) and rgb.dtype == torch.uint8
        assert mask.shape == (span, span) and mask.sum() > 0
        assert 0 <= label < 6
        for _ in range(4):
            cut_rgb, cut_mask, cut_label = pretrain.shifted(view, generator)
            assert cut_rgb.shape == (3, cell, cell) and cut_mask.shape == (cell, cell)
            assert cut_mask.sum() > 0 and cut_label == label
            found = [
                (top, left)
                for top in range(span - cell + 1)
                for left in range(span - cell + 1)
                if torch.equal(rgb[:, top : top + cell, left : left + cell], cut_rgb)
                and torch.equal(mask[top : top + cell, left : left + cell], cut_mask)
            ]
            assert found, "a cut is a window of the stored view"
            offsets.add(found[0])
    assert len(offsets) > 4  # not always the centred window


def test_mosaic_pools_each_shape_inside_its_own_cell(pretrain) -> None:
    config = XSamConfig.small()
    cell, grid = pretrain.CELL, config.segmentation_encoder.grid_size
    tokens_per_cell = grid * cell // config.segmentation_encoder.image_size
    views = []
    for k in range(3):
        mask = torch.zeros(cell, cell)
        mask[8:40, 16:48] = 1
        views.append((torch.full((3, cell, cell), 40 * k, dtype=torch.uint8), mask, k))
    batch = pretrain.MosaicBatch([views], config)
    assert batch.pixels.shape == (1, 3, 256, 256) and batch.labels.tolist() == [0, 1, 2]
    for k, weights in enumerate(batch.weights[0]):
        assert weights.sum().item() == pytest.approx(1.0)
        rows, columns = weights.nonzero(as_tuple=True)
        assert set(columns.tolist()) <= set(range(k * tokens_per_cell, (k + 1) * tokens_per_cell))
        assert set(rows.tolist()) <= set(range(tokens_per_cell))
    mean, std = config.segmentation_encoder.image_mean[0], config.segmentation_encoder.image_std[0]
    assert batch.pixels[0, 0, 0, cell].item() == pytest.approx((40 / 255 - mean) / std, rel=1e-5)
    assert batch.pixels[0, 0, cell, 0].item() == 0.0  # an empty cell stays zero


def test_writes_a_stage_one_init_with_a_trained_encoder(
    pretrain, small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s0"
    options = ["--out", str(out), "--steps", "2", "--batch-size", "1", "--eval-every", "1"]
    monkeypatch.setattr(sys, "argv", [pretrain.__file__, str(small_world), *options])
    pretrain.main()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    assert all(0 <= record["val_acc"] <= 1 and record["loss"] > 0 for record in records)

    model = XSamModel.from_pretrained(out / "final")
    assert model.config.mask_decoder.num_closed_set_classes == 11
    torch.manual_seed(0)
    fresh = XSamModel(model.config)  # the script's own init, before the two training steps
    pairs = zip(model.segmentation_encoder.parameters(), fresh.segmentation_encoder.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    pairs = zip(model.mask_decoder.parameters(), fresh.mask_decoder.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(SystemExit, match="exists"):
        pretrain.main()
