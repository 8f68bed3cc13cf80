"""Batch :class:`~xsam.data.samples.Sample` objects of one task into ``XSamModel.forward`` inputs.

The model runs one task layout per forward, so a batch must be single-task; the
:class:`~xsam.data.mixture.SourceGroupedSampler` guarantees it for training.

Targets are flattened in decoder-sample order, the order the model emits predictions in: sample by
sample, and within a sample its targets (one per ``<SEG>`` for referring/reasoning). In the
``decode_per_seg`` layout the class list of every decoder sample is *all* conditions of the batch,
``torch.cat`` of each sample's conditions in batch order, so a target label ``i`` of sample ``b``
becomes ``i + (conditions of samples 0..b-1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..processing import SegmentationTarget
from ..tokens import IGNORE_INDEX
from .samples import Sample


@dataclass
class Batch:
    """A right-padded batch of one task.

    Attributes:
        input_ids, labels, cond_ids, seg_ids, attention_mask: ``(B, T)`` int64; padding is
            ``pad_token_id`` / -100 / -1 / -1 / 0.
        pixel_values: ``(B, 3, S, S)`` float32 SigLIP views, None for a text-only batch.
        sam_pixel_values: ``(B, 3, S', S')`` float32 SAM views, None for a text-only batch.
        region_masks: per sample ``(R, S', S')`` bool or None; None when no sample has regions.
        targets: flattened :class:`SegmentationTarget` list in decoder-sample order.
        decode_per_seg: the layout flag ``XSamModel.forward`` takes.
        task: the batch's task (its name).
        source: the samples' common source, or their distinct sources sorted and comma-joined.
        meta: each sample's ``meta`` dict.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    cond_ids: torch.Tensor
    seg_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    sam_pixel_values: torch.Tensor | None
    region_masks: list[torch.Tensor | None] | None
    targets: list[SegmentationTarget]
    decode_per_seg: bool
    task: str
    source: str
    meta: list[dict[str, Any]] = field(default_factory=list)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``XSamModel.forward`` (targets and bookkeeping excluded)."""
        return {
            "input_ids": self.input_ids,
            "cond_ids": self.cond_ids,
            "seg_ids": self.seg_ids,
            "pixel_values": self.pixel_values,
            "sam_pixel_values": self.sam_pixel_values,
            "region_masks": self.region_masks,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            "decode_per_seg": self.decode_per_seg,
        }

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor (targets and region masks included) on ``device``."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return Batch(
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            cond_ids=self.cond_ids.to(device),
            seg_ids=self.seg_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=move(self.pixel_values),
            sam_pixel_values=move(self.sam_pixel_values),
            region_masks=None if self.region_masks is None else [move(m) for m in self.region_masks],
            targets=[SegmentationTarget(*(move(part) for part in target)) for target in self.targets],
            decode_per_seg=self.decode_per_seg,
            task=self.task,
            source=self.source,
            meta=self.meta,
        )


def _pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad 1-D tensors to ``(B, max_len)``."""
    length = max(len(row) for row in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def _stack_images(images: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Stack per-sample images; a text-only sample in a mixed chat batch gets zeros (its prompt has
    no ``<image>``, so its image tokens are never spliced in: LLaVA's dummy image)."""
    present = [image for image in images if image is not None]
    if not present:
        return None
    filler = torch.zeros_like(present[0])
    return torch.stack([filler if image is None else image for image in images])


def _offset_targets(samples: Sequence[Sample]) -> list[SegmentationTarget]:
    """Flatten targets; in the ``decode_per_seg`` layout shift labels to batch-wide condition indices."""
    targets, offset = [], 0
    for sample in samples:
        for target in sample.targets:
            labels = target.labels
            if sample.decode_per_seg and labels is not None:
                labels = labels + offset
            targets.append(SegmentationTarget(labels, target.masks, target.ignore_masks))
        offset += sample.num_conditions
    return targets


def collate(samples: Sequence[Sample], *, pad_token_id: int) -> Batch:
    """Batch samples of one task (see the module docstring for the target order and label offsets).

    Raises:
        ValueError: no samples, or samples of several tasks (the error names them).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    tasks = sorted({sample.task for sample in samples})
    if len(tasks) > 1:
        raise ValueError(f"a batch must hold one task, got samples of {tasks}")
    input_ids = _pad([s.input_ids for s in samples], pad_token_id)
    lengths = torch.tensor([len(s.input_ids) for s in samples])
    attention_mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
    regions = [sample.region_masks for sample in samples]
    sources = sorted({sample.source for sample in samples})
    return Batch(
        input_ids=input_ids,
        labels=_pad([s.labels for s in samples], IGNORE_INDEX),
        cond_ids=_pad([s.cond_ids for s in samples], -1),
        seg_ids=_pad([s.seg_ids for s in samples], -1),
        attention_mask=attention_mask,
        pixel_values=_stack_images([s.pixel_values for s in samples]),
        sam_pixel_values=_stack_images([s.sam_pixel_values for s in samples]),
        region_masks=None if all(r is None for r in regions) else regions,
        targets=_offset_targets(samples),
        decode_per_seg=samples[0].decode_per_seg,
        task=samples[0].task,
        source=",".join(sources),
        meta=[sample.meta for sample in samples],
    )
