"""Language model: any ``AutoModelForCausalLM`` built from its config, and the X-SAM token resize."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..config import LanguageModelConfig, TokenConfig


def build_language_model(
    config: LanguageModelConfig, *, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """A randomly initialised causal LM of ``config.hf_config`` (weights come from a checkpoint)."""
    settings = {k: v for k, v in config.hf_config.items() if k not in ("model_type", "architectures")}
    hf_config = AutoConfig.for_model(config.hf_config["model_type"], **settings)
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)


def add_special_tokens(
    tokenizer: PreTrainedTokenizerBase, language_model: PreTrainedModel, tokens: TokenConfig
) -> None:
    """Add ``<SEG>``, ``<p>``, ``</p>`` and resize the LM embeddings to ``len(tokenizer)``.

    This mirrors how X-SAM initialises from a pretrained LLM: for Phi-3 (32011 tokenizer entries,
    32064 embedding rows) the resize *shrinks* the vocabulary to 32014, so the new tokens inherit the
    old padding rows 32011-32013 as their initialisation.
    """
    missing = [t for t in tokens.added_tokens if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens(missing, special_tokens=True)
    with torch.no_grad():
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
