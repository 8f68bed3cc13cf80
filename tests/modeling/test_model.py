"""XSamModel: full-size structure on the meta device, and tiny forwards for every token layout."""

import pytest
import torch

from xsam.config import XSamConfig
from xsam.modeling.xsam import XSamModel
from xsam.tasks.conversation import Turn, encode_conversation

# Parameter counts of the released model (computed from its configs), in millions, by our module names.
OFFICIAL_COUNTS_M = {
    "language_model": 3820.8,
    "image_encoder": 428.2,
    "segmentation_encoder": 308.3,
    "seg_projector": 22.03,
    "image_projector": 12.98,
    "mask_decoder": 14.51,
    "connector": 10.50,
    "pixel_decoder": 6.10,
    "llm_projector": 0.85,
}


def _batch(tokenizer, conversations):
    """Right-pad encoded conversations into (B, T) tensors plus an attention mask."""
    encoded = [encode_conversation(tokenizer, turns) for turns in conversations]
    length = max(len(e.input_ids) for e in encoded)

    def pad(name, value):
        rows = [
            torch.nn.functional.pad(getattr(e, name), (0, length - len(e.input_ids)), value=value)
            for e in encoded
        ]
        return torch.stack(rows)

    mask = torch.stack([(torch.arange(length) < len(e.input_ids)).long() for e in encoded])
    return {
        "input_ids": pad("input_ids", 0),
        "cond_ids": pad("cond_ids", -1),
        "seg_ids": pad("seg_ids", -1),
        "labels": pad("labels", -100),
        "attention_mask": mask,
    }


def test_official_model_on_meta_device_matches_reference_counts():
    with torch.device("meta"):
        model = XSamModel(XSamConfig.official())
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    total = sum(p.numel() for p in params)
    assert abs(total - 4.62e9) / 4.62e9 < 0.005
    for name, millions in OFFICIAL_COUNTS_M.items():
        count = sum(p.numel() for p in getattr(model, name).parameters())
        assert abs(count / 1e6 - millions) / millions < 0.005, (name, count)
    assert model.language_model.get_input_embeddings().weight.shape == (32014, 3072)
    assert model.language_model.get_output_embeddings().weight.shape == (32014, 3072)


def test_image_features_shapes(tiny_model, tiny_images):
    config = tiny_model.config
    with torch.no_grad():
        features = tiny_model.encode_image(*tiny_images)
    hidden = config.language_model.hidden_size
    assert features.llm_tokens.shape == (2, config.num_image_tokens, hidden)
    assert features.seg_token_map.shape == (2, 4, 4, hidden)
    assert features.mask_features.shape == (
        2,
        config.mask_decoder.hidden_dim,
        config.mask_size,
        config.mask_size,
    )
    assert config.mask_size * 8 == config.segmentation_encoder.image_size
    assert [f.shape[-1] for f in features.multi_scale_features] == [4, 8, 16]


def test_random_encoders_start_alive(tiny_model, tiny_images):
    """A from-scratch model must start trainable: transformers' SAM default init (std 1e-10) left the
    SAM residual stream at ~1e-9, so its LayerNorms blew gradients up to ~1e10."""
    sam = tiny_model.segmentation_encoder
    assert 0.01 < sam.sam.vision_encoder.patch_embed.projection.weight.std() < 0.05
    with torch.no_grad():
        outputs = sam(tiny_images[1])
        siglip = tiny_model.image_encoder(tiny_images[0])
    for hidden in [outputs.projector_input, *outputs.connector_inputs]:
        assert hidden.std() > 0.05
    assert siglip.std() > 0.05


def test_generic_layout_pads_categories_per_sample(tiny_model, tokenizer, tiny_images):
    batch = _batch(
        tokenizer,
        [
            [Turn("<image>\nSegment: <p>sky</p>, <p>grass</p>, <p>dog</p>.", "Sure, it is <SEG>.")],
            [Turn("<image>\nSegment: <p>wall</p>.", "<SEG>.")],
        ],
    )
    with torch.no_grad():
        out = tiny_model(**batch, pixel_values=tiny_images[0], sam_pixel_values=tiny_images[1])
    config = tiny_model.config
    seg = out.segmentation
    stages, queries, side = (
        config.mask_decoder.num_layers + 1,
        config.mask_decoder.num_queries,
        config.mask_size,
    )
    assert seg.class_logits.shape == (stages, 2, queries, 3 + 1)
    assert seg.mask_logits.shape == (stages, 2, queries, side, side)
    assert seg.condition_mask.tolist() == [[True, True, True], [True, False, False]]
    # the second sample's padded category slots are never chosen
    assert torch.all(seg.class_logits[:, 1, :, 1:3] == -1e9)
    assert out.logits.shape[:2] == out.sequence.inputs_embeds.shape[:2]
    assert out.logits.shape[-1] == config.language_model.vocab_size
    # padding of the shorter sample is masked out and carries no labels
    short = out.sequence.attention_mask[1].sum()
    assert short < out.sequence.attention_mask.shape[1]
    assert torch.all(out.sequence.labels[1, short:] == -100)


def test_referring_layout_decodes_every_seg_against_all_expressions(tiny_model, tokenizer, tiny_images):
    batch = _batch(
        tokenizer,
        [
            [
                Turn("<image>\nPlease segment <p>the left dog</p>.", "Sure, <SEG>."),
                Turn("Please segment <p>the red car</p>.", "It is <SEG>."),
            ],
            [Turn("<image>\nPlease segment <p>the sky</p>.", "<SEG>.")],
        ],
    )
    with torch.no_grad():
        out = tiny_model(
            **batch, pixel_values=tiny_images[0], sam_pixel_values=tiny_images[1], decode_per_seg=True
        )
    seg = out.segmentation
    # 3 <SEG> tokens -> 3 decoder samples; each sees all 3 expressions of the batch + background
    assert seg.class_logits.shape[1:] == (3, tiny_model.config.mask_decoder.num_queries, 4)
    assert seg.image_index.tolist() == [0, 0, 1]
    assert seg.condition_mask.all()
    # decoder samples of the same image but different <SEG> embeddings give different masks
    assert not torch.allclose(seg.mask_logits[-1, 0], seg.mask_logits[-1, 1])


def test_gcg_phrases_in_the_answer_become_conditions(tiny_model, tokenizer, tiny_images):
    batch = _batch(
        tokenizer,
        [[Turn("<image>\nDescribe the image briefly.", "<p>A dog</p> sits on <p>the grass</p> . <SEG>.")]],
    )
    with torch.no_grad():
        out = tiny_model(**batch, pixel_values=tiny_images[0][:1], sam_pixel_values=tiny_images[1][:1])
    assert out.segmentation.condition_embeddings.shape[:2] == (1, 2)
    assert out.segmentation.class_logits.shape[-1] == 3


def test_region_prompts_are_spliced_and_condition_the_decoder(tiny_model, tokenizer, tiny_images):
    batch = _batch(
        tokenizer,
        [[Turn("<image>\nSegment the regions: <p><region></p>, <p><region></p>.", "Sure, <SEG>.")]],
    )
    canvas = tiny_model.config.segmentation_encoder.image_size
    masks = torch.zeros(2, canvas, canvas, dtype=torch.bool)
    masks[0, 10:20, 10:30] = True
    masks[1, 80:120, 60:70] = True
    images = {"pixel_values": tiny_images[0][:1], "sam_pixel_values": tiny_images[1][:1]}
    with torch.no_grad():
        # the masks have more pixels than the sampler's num_points: a seeded generator fixes the subset
        out = tiny_model(**batch, **images, region_masks=[masks], generator=torch.Generator().manual_seed(3))
        features = tiny_model.encode_image(**images)
        regions = tiny_model.region_embeddings(features, [masks], generator=torch.Generator().manual_seed(3))[
            0
        ]
    text_ids = batch["input_ids"][0][batch["input_ids"][0] != -200]  # rows left once <image> is expanded
    region_rows = (text_ids == -300).nonzero().flatten()
    assert len(region_rows) == 2
    spliced_rows = out.sequence.inputs_embeds[0, ~out.sequence.image_mask[0]]
    assert torch.equal(spliced_rows[region_rows], regions)
    assert out.segmentation.class_logits.shape[-1] == 3
    with pytest.raises(ValueError, match="region"):
        tiny_model(**batch, **images)


def test_chat_has_no_segmentation_and_text_only_works(tiny_model, tokenizer, tiny_images):
    batch = _batch(tokenizer, [[Turn("<image>\nWhat is in the image?", "A dog.")]])
    with torch.no_grad():
        out = tiny_model(**batch, pixel_values=tiny_images[0][:1], sam_pixel_values=tiny_images[1][:1])
        text_only = tiny_model(**_batch(tokenizer, [[Turn("Hello?", "Hi.")]]))
    assert out.segmentation is None
    assert out.logits.shape[1] == len(batch["input_ids"][0]) - 1 + tiny_model.config.num_image_tokens
    assert text_only.segmentation is None


def test_generic_layout_rejects_two_segs_in_one_sample(tiny_model, tokenizer, tiny_images):
    batch = _batch(tokenizer, [[Turn("<image>\n<p>a</p>", "<SEG> <SEG>")]])
    with pytest.raises(ValueError, match="exactly one <SEG>"):
        tiny_model(**batch, pixel_values=tiny_images[0][:1], sam_pixel_values=tiny_images[1][:1])


def test_closed_set_head_for_stage_one(tiny_images):
    config = XSamConfig.tiny()
    config.mask_decoder.num_closed_set_classes = 5
    model = XSamModel(config).eval()
    with torch.no_grad():
        class_logits, mask_logits = model.segment_closed_set(tiny_images[1])
    assert class_logits.shape == (10, 2, 16, 6)
    assert mask_logits.shape == (10, 2, 16, 16, 16)


def test_bf16_forward_runs(tokenizer, tiny_images):
    model = XSamModel(XSamConfig.tiny()).to(torch.bfloat16).eval()
    batch = _batch(tokenizer, [[Turn("<image>\n<p>sky</p>", "<SEG>.")]])
    with torch.no_grad():
        out = model(
            **batch,
            pixel_values=tiny_images[0][:1].bfloat16(),
            sam_pixel_values=tiny_images[1][:1].bfloat16(),
        )
    assert out.segmentation.mask_logits.dtype == torch.bfloat16
    assert torch.isfinite(out.segmentation.mask_logits.float()).all()


def test_cached_image_prefix_gives_the_same_outputs_as_a_full_forward(tiny_model, tokenizer, tiny_images):
    """[<s>, <|user|>, <image>] is shared by every prompt on an image: prefill it once, then run only
    the rest of each prompt against a copy-free, cropped cache."""
    images = {"pixel_values": tiny_images[0][:1], "sam_pixel_values": tiny_images[1][:1]}
    prompts = [
        [Turn("<image>\nSegment: <p>sky</p>, <p>dog</p>.", "Sure, <SEG>.")],
        [Turn("<image>\nWhere is <p>the left dog</p>?", "It is <SEG>.")],
    ]
    with torch.no_grad():
        features = tiny_model.encode_image(**images)
        prefix = torch.tensor([[tokenizer.bos_token_id, 32010, -200]])
        none = torch.full_like(prefix, -1)
        cache = tiny_model.prefill(
            tiny_model.prepare_sequence(prefix, cond_ids=none, seg_ids=none, image_features=features)
        )
        prefix_length = cache.get_seq_length()
        for turns in prompts:
            batch = _batch(tokenizer, [turns])
            assert torch.equal(batch["input_ids"][0, :3], prefix[0])
            full = tiny_model(**batch, image_features=features)
            cached = tiny_model(
                batch["input_ids"][:, 3:],
                cond_ids=batch["cond_ids"][:, 3:],
                seg_ids=batch["seg_ids"][:, 3:],
                image_features=features,
                past_key_values=cache,
            )
            tiny_model.truncate_cache(cache, prefix_length)
            assert cache.get_seq_length() == prefix_length
            suffix = full.hidden_states.shape[1] - cached.hidden_states.shape[1]
            torch.testing.assert_close(
                cached.hidden_states, full.hidden_states[:, suffix:], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                cached.segmentation.mask_logits, full.segmentation.mask_logits, atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                cached.segmentation.class_logits, full.segmentation.class_logits, atol=1e-5, rtol=1e-5
            )
    assert prefix_length == 2 + tiny_model.config.num_image_tokens
