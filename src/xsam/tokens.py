"""Token conventions shared by prompts, samples, the model and training: one definition each.

* ``<image>`` and ``<region>`` are *placeholders*, not tokens: prompt encoding splits on them and
  inserts the negative sentinel ids of :class:`~xsam.config.TokenConfig`; the model splices the image
  tokens and region embeddings in at those positions.
* ``<SEG>``, ``<p>`` and ``</p>`` are tokens added to the text tokenizer (:func:`load_tokenizer`);
  ``cond_ids`` number the ``<p> … </p>`` spans (:func:`phrase_ids`) and ``seg_ids`` the ``<SEG>``
  tokens (:func:`seg_token_ids`).
* Labels are :data:`IGNORE_INDEX` where no loss applies.

The package ships the Phi-3-mini-4k-instruct tokenizer (``assets/phi3-tokenizer``), the default of
:func:`load_tokenizer`.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import TokenConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label of a position that no loss reads (prompt text, image tokens, padding)."""

IMAGE = TokenConfig.image_placeholder
REGION = TokenConfig.region_placeholder
SEG = TokenConfig.seg_token
PHRASE_START = TokenConfig.phrase_start_token
PHRASE_END = TokenConfig.phrase_end_token
END = TokenConfig.end_token


_CONTROL = re.compile(r"<\|[A-Za-z0-9_]*\|>|</?s>|<unk>|<SEG>|</?p>|<image>|<region>")
"""Strings that prompt encoding would read as control tokens or placeholders: X-SAM's own and the
chat template's (``<|user|>``, ``<|end|>``, ``<s>``...)."""
WORD_JOINER = "\u2060"


def literal(text: str) -> str:
    """User text made safe to put in a prompt: every control string in it (``<SEG>``, ``<p>``,
    ``<|end|>``, ``<image>``...) gets an invisible word joiner after its ``<``, so that it is read as the
    characters it shows and only our templates insert control tokens."""
    return _CONTROL.sub(lambda match: f"<{WORD_JOINER}{match.group()[1:]}", text)


def phrase_ids(token_ids: torch.Tensor, start_id: int, end_id: int) -> torch.Tensor:
    """Phrase index for every token from ``<p>`` through ``</p>`` (inclusive), -1 elsewhere: ``(T,)``.

    An unclosed ``<p>`` (e.g. generation stopped early) does not form a phrase.
    """
    cond = torch.full_like(token_ids, -1)
    phrase, start = 0, None
    for position, token in enumerate(token_ids.tolist()):
        if token == start_id:
            start = position
        elif token == end_id and start is not None:
            cond[start : position + 1] = phrase
            phrase, start = phrase + 1, None
    return cond


def seg_token_ids(token_ids: torch.Tensor, seg_id: int) -> torch.Tensor:
    """``0, 1, 2, …`` at ``<SEG>`` tokens, -1 elsewhere: ``(T,)``."""
    flags = token_ids == seg_id
    index = torch.cumsum(flags.long(), 0) - 1
    return torch.where(flags, index, torch.full_like(index, -1))


def default_tokenizer_dir() -> Path:
    """Directory of the bundled Phi-3 tokenizer (without the X-SAM tokens)."""
    return Path(str(resources.files("xsam") / "assets" / "phi3-tokenizer"))


def load_tokenizer(
    path: str | Path | None = None, *, tokens: TokenConfig | None = None
) -> PreTrainedTokenizerBase:
    """Load a local tokenizer directory (default: bundled Phi-3) and add the X-SAM special tokens.

    Tokens already present are not added twice. Raises ``ValueError`` if the resulting ids differ from
    ``tokens`` (the ids the model's embedding rows were trained for).
    """
    from transformers import AutoTokenizer

    tokens = tokens or TokenConfig()
    directory = Path(path) if path is not None else default_tokenizer_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    missing = [t for t in tokens.added_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    check_token_ids(tokenizer, tokens)
    return tokenizer


def check_token_ids(tokenizer: PreTrainedTokenizerBase, tokens: TokenConfig) -> None:
    """Raise ``ValueError`` unless the tokenizer maps the special tokens to the config's ids."""
    expected = {
        tokens.seg_token: tokens.seg_token_id,
        tokens.phrase_start_token: tokens.phrase_start_token_id,
        tokens.phrase_end_token: tokens.phrase_end_token_id,
        tokens.end_token: tokens.end_token_id,
    }
    actual = {text: tokenizer.convert_tokens_to_ids(text) for text in expected}
    if actual != expected:
        raise ValueError(f"tokenizer ids {actual} do not match the model's token config {expected}")
