"""Conversations as model inputs and generated text as results: the Phi-3 chat template.

The layout follows the official data path (xtuner ``phi3_chat`` template + its encode function):

* BOS ``<s>`` before the first turn only;
* each turn: ``<|user|>\\n{question}<|end|>\\n<|assistant|>\\n`` (no loss), then the answer with its
  ``<|end|>`` suffix (loss), then the separator ``\\n`` (no loss);
* every text chunk is tokenised on its own (the question, the answer, the separator, and the pieces
  between ``<image>`` / ``<region>`` placeholders), each getting the SentencePiece prefix ``▁``;
* ``cond_ids`` number the ``<p> … </p>`` spans (both tags included), ``seg_ids`` the ``<SEG>`` tokens.

Generated answers go the other way: :func:`generated_phrases` reads the grounded phrases and
:func:`readable_text` drops X-SAM's tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..config import TokenConfig
from ..tokens import IGNORE_INDEX, phrase_ids, seg_token_ids

USER_TEMPLATE = "<|user|>\n{question}<|end|>\n<|assistant|>\n"
ANSWER_SUFFIX = "<|end|>"
SEPARATOR = "\n"


@dataclass
class Turn:
    """One exchange. ``answer`` is None for the last turn of a prompt awaiting generation."""

    question: str
    answer: str | None = None


@dataclass
class EncodedConversation:
    """1-D ``(T,)`` tensors of one sample."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    cond_ids: torch.Tensor
    seg_ids: torch.Tensor


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str, tokens: TokenConfig) -> list[int]:
    """Tokenise ``text``, replacing each placeholder by its sentinel id; pieces are encoded apart."""
    sentinels = {
        tokens.image_placeholder: tokens.image_token_index,
        tokens.region_placeholder: tokens.region_token_index,
    }
    pattern = "(" + "|".join(re.escape(p) for p in sentinels) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if piece in sentinels:
            ids.append(sentinels[piece])
        elif piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[Turn],
    *,
    tokens: TokenConfig | None = None,
    add_bos: bool = True,
) -> EncodedConversation:
    """Encode a multi-turn conversation. A final turn without answer ends after ``<|assistant|>\\n``."""
    tokens = tokens or TokenConfig()
    ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for i, turn in enumerate(turns):
        question = _encode_text(tokenizer, USER_TEMPLATE.format(question=turn.question), tokens)
        ids += question
        labels += [IGNORE_INDEX] * len(question)
        if turn.answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        answer = _encode_text(tokenizer, turn.answer + ANSWER_SUFFIX, tokens)
        separator = _encode_text(tokenizer, SEPARATOR, tokens)
        ids += answer + separator
        labels += answer + [IGNORE_INDEX] * len(separator)
    input_ids = torch.tensor(ids, dtype=torch.long)
    return EncodedConversation(
        input_ids=input_ids,
        labels=torch.tensor(labels, dtype=torch.long),
        cond_ids=phrase_ids(input_ids, tokens.phrase_start_token_id, tokens.phrase_end_token_id),
        seg_ids=seg_token_ids(input_ids, tokens.seg_token_id),
    )


_TAG = re.compile(r"</?p>|<SEG>")


def generated_phrases(text: str) -> list[str]:
    """Text between ``<p>`` and ``</p>`` of a generated answer, stripped, in order."""
    return [phrase.strip() for phrase in re.findall(r"<p>(.*?)</p>", text, flags=re.S)]


def readable_text(text: str) -> str:
    """A generated answer for display and metrics: sentences holding ``<SEG>`` dropped, tags removed."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    kept = [sentence for sentence in sentences if "<SEG>" not in sentence]
    return re.sub(r"\s+", " ", _TAG.sub("", " ".join(kept))).strip()
