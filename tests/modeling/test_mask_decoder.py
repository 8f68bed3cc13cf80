"""Mask decoder and class heads: parity with transformers' Mask2Former, X-SAM's conditioning, sizes."""

from __future__ import annotations

import math
import re

import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerTransformerModule

from xsam.config import MaskDecoderConfig
from xsam.modeling.class_head import ClosedSetClassHead, OpenVocabularyClassHead
from xsam.modeling.mask_decoder import MaskDecoder, MaskDecoderOutput

TINY = MaskDecoderConfig(hidden_dim=32, num_queries=10, num_layers=3, num_heads=4, ffn_dim=64)
LEVEL_SIZES = ((4, 4), (8, 8), (16, 16))  # coarse -> fine, like the pixel decoder's output
MASK_SIZE = (16, 16)
BATCH = 2

# transformers' ``Mask2FormerTransformerModule`` keys -> ours. The released checkpoint stores the same
# keys under ``segmentor.decoder.``. Ordered; the first matching pattern wins.
HF_TO_OURS = (
    (r"^queries_features\.", "query_features."),
    (r"^queries_embedder\.", "query_position_embeddings."),
    (r"^level_embed\.", "level_embed."),
    (r"^decoder\.layers\.", "layers."),  # sub-names (self_attn.q_proj, cross_attn.in_proj_weight, ...) agree
    (r"^decoder\.layernorm\.", "norm."),
    (r"^decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"mask_embedder.\1."),
)


def hf_to_ours(key: str) -> str:
    for pattern, replacement in HF_TO_OURS:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    raise KeyError(f"no rename rule for {key}")


def make_hf_module(config: MaskDecoderConfig) -> Mask2FormerTransformerModule:
    hf_config = Mask2FormerConfig(
        hidden_dim=config.hidden_dim,
        feature_size=config.hidden_dim,
        mask_feature_size=config.hidden_dim,
        num_attention_heads=config.num_heads,
        num_queries=config.num_queries,
        decoder_layers=config.num_layers + 1,  # HF builds decoder_layers - 1 layers
        dim_feedforward=config.ffn_dim,
        dropout=0.0,
        pre_norm=False,
        enforce_input_projection=False,
    )
    return Mask2FormerTransformerModule(in_features=config.hidden_dim, config=hf_config).eval()


def copy_into_hf(ours: MaskDecoder, hf: Mask2FormerTransformerModule) -> None:
    """Load our weights into the HF module; every key on both sides must be used exactly once."""
    our_state = ours.state_dict()
    renamed = {hf_key: hf_to_ours(hf_key) for hf_key in hf.state_dict()}
    assert sorted(renamed.values()) == sorted(our_state), "rename table is not a bijection"
    hf.load_state_dict({hf_key: our_state[our_key] for hf_key, our_key in renamed.items()}, strict=True)


def perturbed_decoder(seed: int = 0) -> MaskDecoder:
    """A tiny decoder whose every parameter (LayerNorms and zero biases too) is randomised."""
    torch.manual_seed(seed)
    decoder = MaskDecoder(TINY, num_levels=len(LEVEL_SIZES)).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return decoder


def random_inputs(batch: int = BATCH, seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dim = TINY.hidden_dim
    features = [torch.randn(batch, dim, h, w, generator=generator) for h, w in LEVEL_SIZES]
    return features, torch.randn(batch, dim, *MASK_SIZE, generator=generator)


def force_empty_masks(decoder: MaskDecoder, mask_features: torch.Tensor) -> torch.Tensor:
    """Make some queries predict an all-negative mask (others all-positive) at every stage.

    A rank-1 last mask-MLP layer ``u v^T`` with mask features ``u * (positive field)`` gives logits
    ``(v . r_q) * field``, whose sign depends only on the query. This exercises the reference's
    "fully masked rows attend everywhere" rule, which random weights rarely reach.
    """
    # Unit vectors keep the logits O(1), so atol/rtol 1e-5 stay meaningful.
    u, v = (torch.nn.functional.normalize(torch.randn(TINY.hidden_dim), dim=0) for _ in range(2))
    with torch.no_grad():
        decoder.mask_embedder[-1].weight.copy_(torch.outer(u, v))
        decoder.mask_embedder[-1].bias.zero_()
    field = mask_features[:, :1].abs() + 0.5
    return u[None, :, None, None] * field


def run_hf(hf: Mask2FormerTransformerModule, features: list[torch.Tensor], mask_features: torch.Tensor):
    with torch.no_grad():
        output = hf(features, mask_features)
    states = torch.stack(output.intermediate_hidden_states).transpose(1, 2)  # (P, Q, N, D) -> (P, N, Q, D)
    return states, torch.stack(output.masks_queries_logits)


@pytest.mark.parametrize("regime", ["random", "empty_masks"])
def test_matches_transformers_mask2former(regime: str) -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs()
    if regime == "empty_masks":
        mask_features = force_empty_masks(decoder, mask_features)
    hf = make_hf_module(TINY)
    copy_into_hf(decoder, hf)

    with torch.no_grad():
        ours = decoder(features, mask_features)
    hf_states, hf_logits = run_hf(hf, features, mask_features)

    stages = TINY.num_layers + 1
    assert ours.query_states.shape == (stages, BATCH, TINY.num_queries, TINY.hidden_dim)
    assert ours.mask_logits.shape == (stages, BATCH, TINY.num_queries, *MASK_SIZE)
    torch.testing.assert_close(ours.query_states, hf_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.mask_logits, hf_logits, atol=1e-5, rtol=1e-5)

    # The comparison only means something if the attention masks are neither empty nor full.
    per_query_empty = (ours.mask_logits < 0).flatten(-2).all(-1)
    if regime == "random":
        assert 0.1 < (ours.mask_logits < 0).float().mean() < 0.9
    else:
        assert per_query_empty.any() and not per_query_empty.all()


def test_query_offset_is_added_to_content_queries_only() -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs(batch=1)
    offset = torch.randn(1, TINY.hidden_dim)
    hf = make_hf_module(TINY)
    copy_into_hf(decoder, hf)
    with torch.no_grad():
        hf.queries_features.weight.add_(offset)  # the position embeddings stay untouched
        ours = decoder(features, mask_features, query_offset=offset)
    hf_states, hf_logits = run_hf(hf, features, mask_features)
    torch.testing.assert_close(ours.query_states, hf_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.mask_logits, hf_logits, atol=1e-5, rtol=1e-5)


def test_each_sample_uses_its_own_offset() -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs(batch=2)
    offsets = torch.randn(2, TINY.hidden_dim)
    with torch.no_grad():
        batched = decoder(features, mask_features, query_offset=offsets)
        for index in range(2):
            single = decoder(
                [level[index : index + 1] for level in features],
                mask_features[index : index + 1],
                query_offset=offsets[index : index + 1],
            )
            torch.testing.assert_close(batched.mask_logits[:, index], single.mask_logits[:, 0])
            torch.testing.assert_close(batched.query_states[:, index], single.query_states[:, 0])


def test_forward_has_no_randomness_even_in_training_mode() -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs()
    with torch.no_grad():
        expected = decoder(features, mask_features)
        rng_before = torch.get_rng_state()
        trained = decoder.train()(features, mask_features)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.testing.assert_close(trained.mask_logits, expected.mask_logits, atol=0, rtol=0)


def test_bfloat16_forward() -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs()
    with torch.no_grad():
        reference = decoder(features, mask_features)
        output = decoder.to(torch.bfloat16)(
            [level.bfloat16() for level in features],
            mask_features.bfloat16(),
            torch.zeros(BATCH, 32).bfloat16(),
        )
    assert isinstance(output, MaskDecoderOutput)
    assert output.mask_logits.dtype == output.query_states.dtype == torch.bfloat16
    assert torch.isfinite(output.mask_logits).all() and torch.isfinite(output.query_states).all()
    # Stage 0 involves no attention masks, so it must agree with float32 to bfloat16 precision.
    torch.testing.assert_close(output.mask_logits[0].float(), reference.mask_logits[0], atol=0.3, rtol=0.05)


def test_wrong_number_of_levels_is_an_error() -> None:
    decoder = perturbed_decoder()
    features, mask_features = random_inputs()
    with pytest.raises(ValueError, match="feature levels"):
        decoder(features[:2], mask_features)


def test_official_size_builds_on_meta_device() -> None:
    config = MaskDecoderConfig()
    with torch.device("meta"):
        decoder = MaskDecoder(config, num_levels=3)
        open_head = OpenVocabularyClassHead(config)
        closed_head = ClosedSetClassHead(MaskDecoderConfig(num_closed_set_classes=133))
    count = sum(parameter.numel() for parameter in decoder.parameters())
    # The released checkpoint's ``segmentor.decoder.`` has 14.51 M parameters.
    assert abs(count - 14.51e6) / 14.51e6 < 0.005
    assert len(decoder.layers) == 9
    assert all(parameter.is_meta for parameter in decoder.parameters())
    assert open_head.logit_scale.shape == (1,) and open_head.background.weight.shape == (1, 256)
    assert closed_head.classifier.weight.shape == (134, 256)


def make_open_head(dim: int, scale: float) -> OpenVocabularyClassHead:
    head = OpenVocabularyClassHead(MaskDecoderConfig(hidden_dim=dim))
    with torch.no_grad():
        head.logit_scale.fill_(math.log(scale))
    return head


def test_open_vocabulary_logits_are_scaled_cosines() -> None:
    head = make_open_head(dim=2, scale=10.0)
    with torch.no_grad():
        head.background.weight.copy_(torch.tensor([[0.0, -3.0]]))
    queries = torch.tensor([[[2.0, 0.0], [0.0, 0.5]]])  # (N=1, Q=2, D=2); norms must not matter
    classes = torch.tensor([[[1.0, 0.0], [4.0, 4.0]]])  # (N=1, C=2, D=2)
    logits = head(queries, classes, torch.ones(1, 2, dtype=torch.bool))
    diagonal = 10.0 / math.sqrt(2.0)
    expected = torch.tensor([[[10.0, diagonal, 0.0], [0.0, diagonal, -10.0]]])  # last column: background
    torch.testing.assert_close(logits, expected)
    assert head.logit_scale.item() == pytest.approx(math.log(10.0))
    assert OpenVocabularyClassHead(MaskDecoderConfig()).logit_scale.item() == pytest.approx(
        math.log(1 / 0.07)
    )


def test_open_vocabulary_clamps_and_masks_padding() -> None:
    head = make_open_head(dim=2, scale=1000.0)
    with torch.no_grad():
        head.background.weight.copy_(torch.tensor([[1.0, 0.0]]))
    queries = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])  # (N=2, Q=1, D=2)
    classes = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[-1.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, False]])  # sample 1 has one real class and one pad
    logits = head(queries, classes, valid)
    expected = torch.tensor([[[500.0, -500.0, 500.0]], [[500.0, -1e9, -500.0]]])
    torch.testing.assert_close(logits, expected)


def test_open_vocabulary_keeps_leading_stage_dims_and_backpropagates() -> None:
    head = make_open_head(dim=8, scale=5.0)
    stages, batch, queries, classes = 3, 2, 4, 5
    query_states = torch.randn(stages, batch, queries, 8)
    class_embeddings = torch.randn(batch, classes, 8)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    logits = head(query_states, class_embeddings, valid)
    assert logits.shape == (stages, batch, queries, classes + 1)
    torch.testing.assert_close(logits[1], head(query_states[1], class_embeddings, valid))
    assert (logits[:, 1, :, 2:5] == -1e9).all() and (logits[..., -1] > -500).all()

    logits[..., -1].sum().backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad.abs().item() > 0
    assert head.background.weight.grad is not None and head.background.weight.grad.abs().sum() > 0


def test_closed_set_head() -> None:
    head = ClosedSetClassHead(MaskDecoderConfig(hidden_dim=16, num_closed_set_classes=7))
    assert head(torch.randn(3, 2, 5, 16)).shape == (3, 2, 5, 8)  # 7 classes + no-object
    with pytest.raises(ValueError, match="num_closed_set_classes"):
        ClosedSetClassHead(MaskDecoderConfig(hidden_dim=16))
