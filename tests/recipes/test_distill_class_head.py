"""recipes/default-model/distill_class_head.py (stage 2b): stage 1's closed-set head distilled into the
LLM's class embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from script_support import load_script
from xsam import XSamConfig, XSamModel


@pytest.fixture(scope="module")
def distill():
    return load_script("distill_class_head")


def test_teacher_is_the_closed_set_head_restricted_to_the_prompt_classes(distill) -> None:
    dataset = ["a", "b", "c"]
    logits = torch.randn(2, 2, 5, len(dataset) + 1)  # (P, B, Q, K + 1)
    prompts = [["c", "a"], ["b"]]
    targets = distill.teacher_targets(logits, prompts, dataset, width=4)  # 2 classes + 1 padded + bg
    assert targets.shape == (2, 2, 5, 4)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2, 2, 5))
    first = logits[:, 0][..., [2, 0, 3]].softmax(-1)
    torch.testing.assert_close(targets[:, 0][..., [0, 1, 3]], first)
    assert targets[:, 0, :, 2].abs().max() == 0  # the padded slot
    second = logits[:, 1][..., [1, 3]].softmax(-1)
    torch.testing.assert_close(targets[:, 1][..., [0, 3]], second)
    assert targets[:, 1, :, 1:3].abs().max() == 0


def test_trains_only_the_llm_side_and_writes_a_stage_three_init(
    distill, small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = XSamConfig.tiny()
    config.mask_decoder.num_closed_set_classes = 11
    torch.manual_seed(0)
    XSamModel(config).save_pretrained(tmp_path / "s2")
    before = XSamModel.from_pretrained(tmp_path / "s2").state_dict()
    out = tmp_path / "s2b"
    options = ["--out", str(out), "--steps", "2", "--batch-size", "2", "--log-every", "1", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", [distill.__file__, str(tmp_path / "s2"), str(small_world), *options])
    distill.main()

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["loss_kl"] >= 0 and row["loss_mask"] > 0 and 0 <= row["agreement"] <= 1 for row in rows)
    after = XSamModel.from_pretrained(out / "final")
    changed = {
        name.split(".")[0]
        for name, value in after.state_dict().items()
        if not torch.equal(value, before[name])
    }
    assert {"language_model", "llm_projector"} <= changed <= set(distill.TRAINED)


def test_refuses_a_model_without_a_closed_set_head(
    distill, small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    XSamModel(XSamConfig.tiny()).save_pretrained(tmp_path / "s3")
    argv = [distill.__file__, str(tmp_path / "s3"), str(small_world), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        distill.main()
    assert "no closed-set head" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
