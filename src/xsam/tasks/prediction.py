"""The result of one prompt: masks at the original image size plus labels, scores and text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..processing import encode_rle


@dataclass
class Prediction:
    """Masks ``(N, H, W)`` bool in the original image frame with one label and score each.

    ``labels`` name what each mask answers (a category, the expression, a phrase, ``region k``);
    ``phrases`` are the grounded phrases of GCG, ``text`` the generated text (GCG, chat) with X-SAM's
    tags removed, ``raw_text`` with them. ``segmentation`` is the panoptic/semantic id map when the
    task produces one. ``logits`` keeps the decoder output the masks came from (not serialised).
    """

    task: str
    masks: torch.Tensor
    labels: list[str]
    scores: list[float]
    phrases: list[str] = field(default_factory=list)
    text: str | None = None
    raw_text: str | None = None
    segmentation: torch.Tensor | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    logits: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {tuple(self.masks.shape)}")
        if not (len(self.labels) == len(self.scores) == len(self.masks)):
            raise ValueError("masks, labels and scores must have the same length")

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def to_coco(
        self, image_id: int | str = 0, *, category_ids: dict[str, int] | None = None
    ) -> list[dict[str, Any]]:
        """COCO result entries (``segmentation`` as compressed RLE), one per mask."""
        entries = []
        for index, (mask, label, score) in enumerate(zip(self.masks, self.labels, self.scores, strict=True)):
            entry = {
                "image_id": image_id,
                "category_id": category_ids[label] if category_ids else index,
                "label": label,
                "segmentation": encode_rle(mask.cpu().numpy().astype(bool)),
                "score": float(score),
            }
            entries.append(entry)
        return entries

    def to_dict(self, image_id: int | str = 0) -> dict[str, Any]:
        """A JSON-ready summary: task, sizes, text, phrases, segments and the COCO-RLE masks."""
        return {
            "task": self.task,
            "image_size": list(self.image_size),
            "text": self.text,
            "raw_text": self.raw_text,
            "phrases": self.phrases,
            "segments": self.segments,
            "annotations": self.to_coco(image_id),
        }

    def to_json(self, image_id: int | str = 0, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(image_id), **kwargs)
