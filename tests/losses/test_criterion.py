"""Segmentation loss: point sampling, Hungarian matching, the criterion and its random-call order.

The parity tests at the end read the training fixtures of the official implementation that the
``index.json`` of ``XSAM_PARITY_DIR`` (default ``<repo>/../shared/parity``) lists, and are skipped, saying
what is missing, when there are none.
"""

from __future__ import annotations

import math

import pytest
import torch

from parity_support import fixture_params, load
from xsam.losses import (
    RecordingRandom,
    ReplayRandom,
    SegmentationCriterion,
    SegmentationTarget,
    TorchRandom,
    point_sample,
    uncertain_points,
)

pytest.importorskip("scipy")


# ----------------------------------------------------------------------------------------- helpers
def _pixel_centre_rand(grid_size: int, seed: int = 0):
    """Uniform draws snapped to the pixel centres of a ``grid_size``² map.

    Bilinear sampling at a pixel centre returns that pixel exactly, so a perfect prediction then
    has (almost) zero loss instead of the irreducible cost of points straddling a mask boundary.
    """
    generator = torch.Generator().manual_seed(seed)

    def rand(shape: tuple[int, ...]) -> torch.Tensor:
        uniform = torch.rand(shape, generator=generator)
        return (torch.floor(uniform * grid_size) + 0.5) / grid_size

    return rand


def _row_tiled_rand(seed: int = 0):
    """Every row of a draw gets the same points, so results cannot depend on which mask gets which row."""
    generator = torch.Generator().manual_seed(seed)

    def rand(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand((1, *shape[1:]), generator=generator).expand(shape).clone()

    return rand


def _random_batch(seed: int, *, stages: int = 2, size: int = 8, gt_size: int = 32):
    """Logits ``(P, 2, 6, 5)`` / ``(P, 2, 6, size, size)`` and two samples with 2 and 1 targets."""
    generator = torch.Generator().manual_seed(seed)
    class_logits = 3 * torch.randn(stages, 2, 6, 5, generator=generator)
    mask_logits = 4 * torch.randn(stages, 2, 6, size, size, generator=generator)
    targets = [
        SegmentationTarget(torch.tensor([0, 3]), torch.rand(2, gt_size, gt_size, generator=generator) > 0.5),
        SegmentationTarget(torch.tensor([1]), torch.rand(1, gt_size, gt_size, generator=generator) > 0.5),
    ]
    return class_logits, mask_logits, targets


def _small_criterion(**overrides) -> SegmentationCriterion:
    return SegmentationCriterion(**{"num_points": 64, **overrides})


# ---------------------------------------------------------------------------------- point sampling
def test_point_sample_reads_pixel_centres_in_x_y_order():
    values = torch.arange(12.0).reshape(1, 1, 3, 4)  # value = 4 * row + col
    rows, cols = torch.tensor([0, 2, 1]), torch.tensor([3, 0, 1])
    coords = torch.stack([(cols + 0.5) / 4, (rows + 0.5) / 3], dim=-1)[None]
    torch.testing.assert_close(point_sample(values, coords)[0, 0], (4 * rows + cols).float())


def test_uncertain_points_keeps_the_candidates_closest_to_the_boundary():
    # logit = 40 * (x - 0.5): uncertainty depends only on the distance of x to 0.5.
    x = (torch.arange(64.0) + 0.5) / 64
    logits = (40 * (x - 0.5)).expand(2, 1, 64, 64).contiguous()
    recorder = RecordingRandom(TorchRandom(torch.Generator().manual_seed(0)))
    points = uncertain_points(logits, 40, 3.0, 0.75, recorder)
    assert recorder.shapes == [(2, 120, 2), (2, 10, 2)]
    candidates, uniform = recorder.draws
    torch.testing.assert_close(points[:, 30:], uniform)
    for row in range(2):
        distance = (candidates[row, :, 0] - 0.5).abs()
        chosen = (points[row, :30, 0] - 0.5).abs()
        assert chosen.max() <= distance.sort().values[30]


# ------------------------------------------------------------------------------------- criterion
def test_perfect_prediction_has_near_zero_loss():
    # Targets at 4x the prediction resolution, block-aligned (as 1024² vs 128²).
    blocks = torch.zeros(2, 8, 8, dtype=torch.bool)
    blocks[0, 1:5, 2:7] = True
    blocks[1, 5:8, 0:3] = True
    gt_masks = blocks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    mask_logits = torch.full((1, 1, 4, 8, 8), -20.0)
    mask_logits[0, 0, 1] = 40.0 * blocks[0] - 20.0
    mask_logits[0, 0, 3] = 40.0 * blocks[1] - 20.0
    class_logits = torch.zeros(1, 1, 4, 4)
    class_logits[0, 0, :, 3] = 20.0  # unmatched queries: background
    class_logits[0, 0, 1] = torch.tensor([20.0, 0.0, 0.0, 0.0])
    class_logits[0, 0, 3] = torch.tensor([0.0, 0.0, 20.0, 0.0])
    targets = [(torch.tensor([0, 2]), gt_masks)]

    output = _small_criterion().compute(class_logits, mask_logits, targets, rand=_pixel_centre_rand(8))

    query_idx, target_idx = output.matches[0][0]
    assert query_idx.tolist() == [1, 3] and target_idx.tolist() == [0, 1]
    for key in ("loss_mask", "loss_dice", "loss_cls"):
        assert output.losses[key].item() < 1e-4, key


def test_loss_is_invariant_to_query_order():
    class_logits, mask_logits, targets = _random_batch(0)
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    criterion = _small_criterion()

    original = criterion.compute(class_logits, mask_logits, targets, rand=_row_tiled_rand(2))
    permuted = criterion.compute(
        class_logits[:, :, permutation], mask_logits[:, :, permutation], targets, rand=_row_tiled_rand(2)
    )

    for key, value in original.losses.items():
        torch.testing.assert_close(permuted.losses[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for stage_original, stage_permuted in zip(original.matches, permuted.matches, strict=True):
        for (query, target), (query_p, target_p) in zip(stage_original, stage_permuted, strict=True):
            assert dict(zip(permutation[query_p].tolist(), target_p.tolist(), strict=True)) == dict(
                zip(query.tolist(), target.tolist(), strict=True)
            )


def test_ignore_regions_contribute_nothing():
    class_logits, mask_logits, targets = _random_batch(3)
    ignore_top_half = torch.zeros(32, 32, dtype=torch.bool)
    ignore_top_half[:16] = True
    with_ignore = [
        SegmentationTarget(t.labels, t.masks, ignore_top_half.expand_as(t.masks).clone()) for t in targets
    ]
    # Prediction rows 0-2 of 8 are only ever interpolated for points with y < 3.5 / 8 < 0.5.
    changed = mask_logits.clone()
    changed[..., :3, :] = 50 * torch.randn(
        changed[..., :3, :].shape, generator=torch.Generator().manual_seed(4)
    )
    criterion = _small_criterion()

    def losses(logits, batch):
        return criterion(class_logits, logits, batch, rand=TorchRandom(torch.Generator().manual_seed(5)))

    reference, perturbed = losses(mask_logits, with_ignore), losses(changed, with_ignore)
    for key, value in reference.items():
        torch.testing.assert_close(perturbed[key], value, rtol=0, atol=1e-6, msg=key)
    assert not torch.allclose(
        losses(mask_logits, targets)["loss_mask"], losses(changed, targets)["loss_mask"]
    )


def test_ignore_value_splits_into_masks_and_ignore_masks():
    masks = torch.tensor([[[0, 1], [255, 1]]], dtype=torch.uint8)
    target = SegmentationTarget.from_ignore_value(torch.tensor([0]), masks)
    assert target.masks.tolist() == [[[False, True], [False, True]]]
    assert target.ignore_masks.tolist() == [[[False, False], [True, False]]]


def test_class_loss_weights_no_object_by_0_1():
    generator = torch.Generator().manual_seed(6)
    class_logits = torch.randn(1, 2, 5, 4, generator=generator)
    class_logits[..., 2] = -1e9  # a padded class slot never gets probability
    mask_logits = torch.randn(1, 2, 5, 8, 8, generator=generator)
    no_targets = [(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 32, 32))] * 2
    criterion = _small_criterion()

    losses = criterion(class_logits, mask_logits, no_targets)

    # Every query targets background: the 0.1 weights cancel in the weighted mean.
    background_nll = -class_logits[0].log_softmax(-1)[..., -1]
    torch.testing.assert_close(losses["loss_cls"], 2.0 * background_nll.mean())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0

    # One match (sample 1, query 4 -> class 1): sum(w * nll) / sum(w) with w = 0.1 on background.
    matches = [(torch.zeros(0, dtype=torch.int64),) * 2, (torch.tensor([4]), torch.tensor([0]))]
    targets = [(torch.zeros(0, dtype=torch.int64), None), (torch.tensor([1]), None)]
    log_probs = class_logits[0].log_softmax(-1)
    weighted_nll, total_weight = 0.0, 0.0
    for sample in range(2):
        for query in range(5):
            matched = (sample, query) == (1, 4)
            weight = 1.0 if matched else 0.1
            weighted_nll -= weight * log_probs[sample, query, 1 if matched else 3].item()
            total_weight += weight
    loss = criterion.class_loss(class_logits[0], targets, matches)
    assert math.isclose(loss.item(), weighted_nll / total_weight, rel_tol=1e-5)


def test_replay_random_reproduces_losses_and_checks_shapes():
    class_logits, mask_logits, targets = _random_batch(7)
    criterion = _small_criterion()
    recorder = RecordingRandom(TorchRandom(torch.Generator().manual_seed(8)))
    recorded = criterion(class_logits, mask_logits, targets, rand=recorder)

    replay = ReplayRandom(recorder.draws)
    replayed = criterion(class_logits, mask_logits, targets, rand=replay)
    assert replay.remaining == 0
    for key, value in recorded.items():
        assert torch.equal(replayed[key], value), key

    wrong_shape = [recorder.draws[0][:, :10], *recorder.draws[1:]]
    with pytest.raises(ValueError, match="shape"):
        criterion(class_logits, mask_logits, targets, rand=ReplayRandom(wrong_shape))
    with pytest.raises(IndexError, match="exhausted"):
        criterion(class_logits, mask_logits, targets, rand=ReplayRandom(recorder.draws[:-1]))


def test_random_calls_follow_the_official_order():
    class_logits, mask_logits, targets = _random_batch(9)
    recorder = RecordingRandom(TorchRandom(), keep_draws=False)
    losses = SegmentationCriterion(num_points=100)(class_logits, mask_logits, targets, rand=recorder)

    # Per prediction: one matcher draw per decoder sample, then candidates (3 x 100) and uniform
    # points (100 - 75) for the 2 + 1 matched masks.
    per_prediction = [(1, 100, 2), (1, 100, 2), (3, 300, 2), (3, 25, 2)]
    assert recorder.shapes == per_prediction * 2
    assert list(losses) == [
        "loss_mask",
        "loss_dice",
        "loss_cls",
        "loss_mask_0",
        "loss_dice_0",
        "loss_cls_0",
        "loss_seg",
    ]
    torch.testing.assert_close(losses["loss_seg"], sum(v for k, v in losses.items() if k != "loss_seg"))


def test_matches_transformers_mask2former_loss_bit_for_bit(monkeypatch):
    """Same numerics and draw order as the public Mask2Former loss that X-SAM's copy derives from."""
    modeling = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    class_logits, mask_logits, targets = _random_batch(10, stages=3)
    config = Mask2FormerConfig(num_labels=4, train_num_points=64, no_object_weight=0.1)
    reference_loss = modeling.Mask2FormerLoss(config, weight_dict={})
    generator, torch_rand = torch.Generator().manual_seed(11), torch.rand
    monkeypatch.setattr(torch, "rand", lambda *shape, **_: torch_rand(*shape, generator=generator))
    auxiliary = [
        {"masks_queries_logits": m, "class_queries_logits": c}
        for m, c in zip(mask_logits[:-1], class_logits[:-1], strict=True)
    ]
    reference = reference_loss(
        mask_logits[-1],
        class_logits[-1],
        [t.masks.float() for t in targets],
        [t.labels for t in targets],
        auxiliary_predictions=auxiliary,
    )
    monkeypatch.undo()

    ours = _small_criterion()(
        class_logits, mask_logits, targets, rand=TorchRandom(torch.Generator().manual_seed(11))
    )
    weights = {
        "loss_cross_entropy": ("loss_cls", 2.0),
        "loss_mask": ("loss_mask", 5.0),
        "loss_dice": ("loss_dice", 5.0),
    }
    for key, value in reference.items():
        base = next(name for name in weights if key.startswith(name))
        our_key, weight = key.replace(base, weights[base][0]), weights[base][1]
        torch.testing.assert_close(ours[our_key], weight * value, rtol=0, atol=0, msg=our_key)


# ------------------------------------------------------------------------------------------ parity
TRAIN_FIXTURES = fixture_params("train", required_tensor="decoder_class_logits_all_stages")


def _fixture_labels(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per decoder sample class labels: one sample with every mask, or one mask per sample (refer)."""
    labels = tensors["segmentor_class_labels"]
    num_samples = tensors["decoder_class_logits_all_stages"].shape[1]
    return [labels] if num_samples == 1 else list(labels.split(1))


@pytest.mark.parity
@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_seeded_generator_regenerates_official_draws(name):
    meta, tensors = load(name)
    class_logits = tensors["decoder_class_logits_all_stages"]
    stages, samples, queries, _ = class_logits.shape
    mask_logits = torch.randn(stages, samples, queries, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = [(labels, torch.rand(len(labels), 64, 64) > 0.5) for labels in _fixture_labels(tensors)]
    rand_meta = meta["criterion_rand"]
    recorder = RecordingRandom(TorchRandom(torch.Generator().manual_seed(rand_meta["generator_seed"])))

    losses = SegmentationCriterion()(class_logits, mask_logits, targets, rand=recorder)

    assert recorder.shapes == [tuple(shape) for shape in rand_meta["call_shapes_in_order"]]
    stored = sorted(key for key in tensors if key.startswith("loss_rand_call_"))
    assert stored, "fixture stores no loss_rand_call_XX"
    for index, key in enumerate(stored):
        assert torch.equal(recorder.draws[index], tensors[key]), key
    official_terms = [key for key in meta["losses"] if key not in ("loss", "loss_llm", "loss_seg")]
    assert [key for key in losses if key != "loss_seg"] == official_terms


@pytest.mark.parity
@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_class_loss_matches_official_for_every_prediction(name):
    meta, tensors = load(name)
    class_logits = tensors["decoder_class_logits_all_stages"]
    targets = [(labels, None) for labels in _fixture_labels(tensors)]
    criterion = SegmentationCriterion()
    stages = class_logits.shape[0]
    for order, stage_matches in enumerate(meta["matcher_indices_per_prediction"]):
        stage = stages - 1 if order == 0 else order - 1
        matches = [(torch.tensor(query), torch.tensor(target)) for query, target in stage_matches]
        loss = criterion.class_weight * criterion.class_loss(class_logits[stage], targets, matches)
        key = "loss_cls" if order == 0 else f"loss_cls_{stage}"
        assert math.isclose(loss.item(), meta["losses"][key], rel_tol=1e-5), key
