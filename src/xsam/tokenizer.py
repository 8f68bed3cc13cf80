"""The X-SAM tokenizer: a Hugging Face tokenizer plus the ``<SEG>``, ``<p>``, ``</p>`` tokens.

The package ships the Phi-3-mini-4k-instruct tokenizer (``assets/phi3-tokenizer``), which is the
default. ``<image>`` and ``<region>`` are *not* tokens: prompt code splits on them and inserts the
sentinel ids of :class:`~xsam.config.TokenConfig`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .config import TokenConfig


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
    expected = {
        tokens.seg_token: tokens.seg_token_id,
        tokens.phrase_start_token: tokens.phrase_start_token_id,
        tokens.phrase_end_token: tokens.phrase_end_token_id,
    }
    actual = {text: tokenizer.convert_tokens_to_ids(text) for text in expected}
    if actual != expected:
        raise ValueError(f"tokenizer ids {actual} do not match the model's token config {expected}")
