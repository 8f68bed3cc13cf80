"""Classification of the mask decoder's queries.

X-SAM classifies every query against a per-sample list of class embeddings that the language model
produced (category names, referring expressions, visual prompts), plus one learned background
embedding: scaled cosine similarity, CLIP style. Stage 1, which has no language model, uses a plain
closed-set linear classifier instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskDecoderConfig

# Bound on the scaled cosine logits (the official head's clamp), and the fill for padded class slots.
_LOGIT_BOUND = 500.0
_PADDED_LOGIT = -1e9


class OpenVocabularyClassHead(nn.Module):
    """``exp(logit_scale) * cos(query, class)`` over ``[class embeddings..., background]``.

    Padded class slots get ``-1e9`` so that softmax and argmax ignore them; the background (last
    column) plays Mask2Former's "no object" role and is always valid.
    """

    def __init__(self, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.logit_scale_init = config.logit_scale_init
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.background = nn.Embedding(1, config.hidden_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``logit_scale = logit_scale_init`` (log(1/0.07)); background ~ N(0, 1) like ``nn.Embedding``."""
        self.logit_scale.fill_(self.logit_scale_init)
        self.background.reset_parameters()

    def forward(self, query_states: Tensor, class_embeddings: Tensor, class_mask: Tensor) -> Tensor:
        """Score every query against its sample's classes.

        Args:
            query_states: ``(..., N, Q, D)`` LayerNorm-ed decoder query states (leading dims: stages).
            class_embeddings: ``(N, C, D)`` class embeddings, padded to the batch's largest ``C``.
            class_mask: ``(N, C)`` bool, True for real classes, False for padding.

        Returns:
            ``(..., N, Q, C + 1)`` logits; column ``C`` is the background / no-object class.
        """
        batch_size = class_embeddings.shape[0]
        background = self.background.weight.expand(batch_size, 1, -1)
        classes = F.normalize(torch.cat([class_embeddings, background], dim=1), dim=-1)
        cosine = torch.einsum("...nqd,ncd->...nqc", F.normalize(query_states, dim=-1), classes)
        logits = (self.logit_scale.exp() * cosine).clamp(-_LOGIT_BOUND, _LOGIT_BOUND)
        valid = F.pad(class_mask.to(torch.bool), (0, 1), value=True)
        return logits.masked_fill(~valid[:, None, :], _PADDED_LOGIT)


class ClosedSetClassHead(nn.Module):
    """Stage-1 head: ``Linear(D, num_closed_set_classes + 1)``, the last class being "no object"."""

    def __init__(self, config: MaskDecoderConfig) -> None:
        super().__init__()
        if config.num_closed_set_classes is None:
            raise ValueError("ClosedSetClassHead needs config.num_closed_set_classes")
        self.classifier = nn.Linear(config.hidden_dim, config.num_closed_set_classes + 1)

    def forward(self, query_states: Tensor) -> Tensor:
        """``(..., Q, D)`` LayerNorm-ed query states -> ``(..., Q, num_closed_set_classes + 1)`` logits."""
        return self.classifier(query_states)
