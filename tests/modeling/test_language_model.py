"""Special tokens, the vocabulary resize, and greedy generation with hidden-state collection."""

import torch
from torch import nn

from xsam.config import LanguageModelConfig, TokenConfig, XSamConfig
from xsam.modeling.language_model import add_special_tokens, build_language_model
from xsam.tasks.conversation import Turn, encode_conversation
from xsam.tokens import default_tokenizer_dir, load_tokenizer


def test_add_special_tokens_shrinks_phi3_vocab_to_32014():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    assert len(tokenizer) == 32011
    hf_config = dict(XSamConfig.tiny().language_model.hf_config, vocab_size=32064)
    llm = build_language_model(LanguageModelConfig(hf_config))
    rows_before = llm.get_input_embeddings().weight[32011:32014].clone()
    add_special_tokens(tokenizer, llm, TokenConfig())
    assert len(tokenizer) == 32014
    assert tokenizer.convert_tokens_to_ids(["<SEG>", "<p>", "</p>"]) == [32011, 32012, 32013]
    assert llm.get_input_embeddings().weight.shape[0] == 32014
    assert llm.get_output_embeddings().weight.shape[0] == 32014
    # the new tokens inherit the old padding rows
    assert torch.equal(llm.get_input_embeddings().weight[32011:32014], rows_before)


def test_placeholders_are_not_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    assert "<image>" not in vocab and "<region>" not in vocab
    encoded = encode_conversation(tokenizer, [Turn("<image>\nWhere is <p><region></p>?", "<SEG>.")])
    assert (encoded.input_ids == -200).sum() == 1
    assert (encoded.input_ids == -300).sum() == 1
    assert encoded.input_ids[0] == tokenizer.bos_token_id


def test_load_tokenizer_checks_ids(tmp_path):
    tokenizer = load_tokenizer()
    wrong = TokenConfig(seg_token_id=5)
    try:
        load_tokenizer(tokens=wrong)
    except ValueError as error:
        assert "do not match" in str(error)
    else:
        raise AssertionError("mismatched token ids were accepted")
    assert len(tokenizer) == 32014


class _ScriptedHead(nn.Module):
    """An LM head that emits a fixed token sequence, one per call on the last position."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab, self.calls = list(script), vocab, 0

    def forward(self, hidden):
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., token] = 1.0
        return logits


def _generate_scripted(model, tokenizer, tiny_images, script):
    """``model.generate`` on one image with an LM head that emits ``script``: (prompt, images, result)."""
    prompt = encode_conversation(tokenizer, [Turn("<image>\nDescribe the image.")])
    images = {"pixel_values": tiny_images[0][:1], "sam_pixel_values": tiny_images[1][:1]}
    original = model.language_model.lm_head
    model.language_model.lm_head = _ScriptedHead(script, model.config.language_model.vocab_size)
    try:
        result = model.generate(prompt.input_ids[None], cond_ids=prompt.cond_ids[None], **images)
    finally:
        model.language_model.lm_head = original
    assert result.token_ids.tolist() == script
    return prompt, images, result


def _teacher_forced(model, prompt, images, result, generated_conds, generated_segs):
    """A plain forward over prompt + generated tokens, with the generated tokens' cond/seg ids."""

    def ids(generated):
        return torch.cat([torch.full_like(prompt.input_ids, -1), torch.tensor(generated)])[None]

    full_ids = torch.cat([prompt.input_ids, result.token_ids])
    with torch.no_grad():
        return model(
            full_ids[None], cond_ids=ids(generated_conds), seg_ids=ids(generated_segs), **images
        ).segmentation


def test_generation_collects_states_that_match_a_teacher_forced_pass(tiny_model, tokenizer, tiny_images):
    tokens = tiny_model.config.tokens
    words = tokenizer.encode("A dog", add_special_tokens=False)
    script = [tokens.phrase_start_token_id, *words, tokens.phrase_end_token_id, tokens.seg_token_id, 32007]
    prompt, images, result = _generate_scripted(tiny_model, tokenizer, tiny_images, script)
    segmentation = result.segmentation
    assert segmentation is not None
    # one generated phrase becomes the single condition (+ background)
    assert segmentation.class_logits.shape[-1] == 2

    # the cached, incremental states equal a teacher-forced forward over prompt + generated tokens
    assert len(words) == 2
    forced = _teacher_forced(
        tiny_model, prompt, images, result, [0, 0, 0, 0, -1, -1], [-1, -1, -1, -1, 0, -1]
    )
    torch.testing.assert_close(
        forced.condition_embeddings, segmentation.condition_embeddings, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(forced.seg_embeddings, segmentation.seg_embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced.mask_logits, segmentation.mask_logits, atol=1e-4, rtol=1e-4)


def test_generation_with_several_segs_decodes_the_last(tiny_model, tokenizer, tiny_images):
    """One ``<SEG>`` per sample is the generation layout; a model that emits more (as an untrained
    one does) still gets masks, from its last ``<SEG>``, instead of an error."""
    tokens = tiny_model.config.tokens
    words = tokenizer.encode("A dog", add_special_tokens=False)
    phrase = [tokens.phrase_start_token_id, *words, tokens.phrase_end_token_id]
    script = [tokens.seg_token_id, *phrase, tokens.seg_token_id, *phrase, tokens.seg_token_id, 32007]
    prompt, images, result = _generate_scripted(tiny_model, tokenizer, tiny_images, script)
    segmentation = result.segmentation
    assert segmentation.seg_embeddings.shape[0] == 1
    assert segmentation.class_logits.shape[-1] == 3  # two generated phrases + background

    n = len(phrase)
    generated_conds = [-1, *[0] * n, -1, *[1] * n, -1, -1]  # <p> through </p> form a phrase
    generated_segs = [-1] * (len(script) - 2) + [0, -1]
    forced = _teacher_forced(tiny_model, prompt, images, result, generated_conds, generated_segs)
    torch.testing.assert_close(forced.seg_embeddings, segmentation.seg_embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        forced.condition_embeddings, segmentation.condition_embeddings, atol=1e-5, rtol=1e-5
    )


def test_generation_stops_at_max_new_tokens(tiny_model, tokenizer):
    prompt = encode_conversation(tokenizer, [Turn("Hello")])
    result = tiny_model.generate(prompt.input_ids[None], cond_ids=prompt.cond_ids[None], max_new_tokens=3)
    assert len(result.token_ids) <= 3
    assert result.segmentation is None
