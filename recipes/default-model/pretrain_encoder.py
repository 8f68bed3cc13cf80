"""Pretrain the small preset's SAM encoder on the synthetic world's shapes (stage 0 of the default model).

    python recipes/default-model/pretrain_encoder.py WORLD --out WORK/s0 --steps 2000

The release starts stage 1 from a pretrained SAM encoder; we have none, and a from-scratch encoder
learns to tell shapes apart only after ~100k labelled shape views (docs/default-model.md,
"Limits"), far more than stage 1 shows it. This script gives it those views cheaply: each training
image is a mosaic of 4 x 4 cells of 64 px, each cell a window of a training image around one
annotated shape (at its native scale, shifted at random by up to 16 px so that shapes do not always sit
at the 16 cell centres, which the ViT's absolute position embeddings would learn), and a linear head
classifies the encoder's last-block features averaged inside each shape's mask (the pooling the mask
decoder's masked attention does) with cross-entropy. A mosaic holds 16 shapes where a scene holds
~3, and only the encoder runs. It is the role ImageNet pretraining plays for Mask2Former's backbone;
only the training split is read.

Writes ``OUT/final``: a ``save_pretrained`` small-preset model (closed-set head of
``--num-closed-set-classes``) whose SAM encoder is the pretrained one and whose other modules are
randomly initialised, for ``xsam train --stage seg_finetune --init OUT/final``; and ``OUT/log.jsonl``
(training loss and accuracy, val accuracy on the val split's shapes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from xsam.config import XSamConfig
from xsam.modeling.xsam import XSamModel

CELL = 64
"""Side of one mosaic cell in pixels (at the SAM input size of 256: 4 x 4 cells, 8 x 8 tokens each)."""
SHIFT = 16
"""Largest offset, per axis, of a cell's window from the shape's centre."""
SPAN = CELL + 2 * SHIFT
"""Side of the stored window around each shape, from which a random ``CELL`` window is cut."""

View = tuple[torch.Tensor, torch.Tensor, int]  # uint8 pixels (3, side, side), mask (side, side), shape


def shape_views(world: Path, split: str) -> list[View]:
    """One ``SPAN``-sized window per annotated shape of ``split``, centred on it (clipped to the image)."""
    data = json.loads((world / f"instances/instances_{split}.json").read_text())
    shape_index = {category["id"]: i for i, category in enumerate(data["categories"])}
    by_image: dict[int, list[dict]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    views = []
    for image in data["images"]:
        if image["id"] not in by_image:
            continue
        rgb = np.asarray(Image.open(world / "images" / split / image["file_name"]).convert("RGB"))
        height, width = rgb.shape[:2]
        if min(height, width) < SPAN:
            raise ValueError(f"{image['file_name']}: images must be at least {SPAN} px on each side")
        for annotation in by_image[image["id"]]:
            mask = mask_utils.decode(annotation["segmentation"])
            x, y, w, h = annotation["bbox"]
            left = min(max(int(x + w / 2) - SPAN // 2, 0), width - SPAN)
            top = min(max(int(y + h / 2) - SPAN // 2, 0), height - SPAN)
            window = (slice(top, top + SPAN), slice(left, left + SPAN))
            views.append(
                (
                    torch.from_numpy(rgb[window].copy()).permute(2, 0, 1),
                    torch.from_numpy(mask[window].astype(np.float32)),
                    shape_index[annotation["category_id"]],
                )
            )
    return views


def shifted(view: View, generator: torch.Generator) -> View:
    """A random ``CELL`` window of a ``SPAN`` view (the centred one if the shape would fall outside)."""
    rgb, mask, label = view
    top, left = torch.randint(2 * SHIFT + 1, (2,), generator=generator).tolist()
    window = (slice(top, top + CELL), slice(left, left + CELL))
    if not mask[window].any():
        window = (slice(SHIFT, SHIFT + CELL), slice(SHIFT, SHIFT + CELL))
    return rgb[(slice(None), *window)], mask[window], label


class MosaicBatch:
    """Normalised mosaics ``(B, 3, S, S)``, per-shape pooling weights over the token grid, labels."""

    def __init__(self, views: list[list[View]], config: XSamConfig) -> None:
        seg = config.segmentation_encoder
        side, per_row = seg.image_size, seg.image_size // CELL
        mean = torch.tensor(seg.image_mean).view(3, 1, 1)
        std = torch.tensor(seg.image_std).view(3, 1, 1)
        pixels, weights, labels = [], [], []
        for mosaic_views in views:
            canvas = torch.zeros(3, side, side)
            masks = torch.zeros(len(mosaic_views), side, side)
            for k, (rgb, mask, label) in enumerate(mosaic_views):
                row, column = divmod(k, per_row)
                window = (slice(row * CELL, (row + 1) * CELL), slice(column * CELL, (column + 1) * CELL))
                canvas[(slice(None), *window)] = (rgb.float() / 255 - mean) / std
                masks[(k, *window)] = mask
                labels.append(label)
            pooled = F.adaptive_avg_pool2d(masks[:, None], seg.grid_size)[:, 0]
            weights.append(pooled / pooled.sum((1, 2), keepdim=True).clamp_min(1e-6))
            pixels.append(canvas)
        self.pixels = torch.stack(pixels)
        self.weights = weights
        self.labels = torch.tensor(labels)


def classify(model: XSamModel, head: nn.Linear, batch: MosaicBatch) -> torch.Tensor:
    features = model.segmentation_encoder(batch.pixels).connector_inputs[-1]  # (B, g, g, C)
    pooled = [torch.einsum("mhw,hwc->mc", weights, features[i]) for i, weights in enumerate(batch.weights)]
    return head(torch.cat(pooled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", type=Path, help="an `xsam synth` output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4, help="mosaics per step (16 shapes each)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak rate: 100 warmup steps, then cosine")
    parser.add_argument("--num-closed-set-classes", type=int, default=11)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.out / "final" / "config.json").is_file():
        raise SystemExit(f"{args.out / 'final'} exists; remove it to pretrain again")

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    config = XSamConfig.small()
    config.mask_decoder.num_closed_set_classes = args.num_closed_set_classes
    model = XSamModel(config)
    train, val = shape_views(args.world, "train"), shape_views(args.world, "val")
    per_mosaic = (config.segmentation_encoder.image_size // CELL) ** 2
    num_shapes = 1 + max(label for _, _, label in train + val)
    head = nn.Linear(config.segmentation_encoder.hidden_size, num_shapes)
    parameters = [*model.segmentation_encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.05)
    warmup = min(100, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        ),
    )
    if not train or not val:
        raise SystemExit(f"{args.world}: the train and val splits need annotated shapes")
    val_generator = torch.Generator().manual_seed(args.seed)  # the same val windows at every evaluation
    val = [shifted(view, val_generator) for view in val]
    val_mosaics = [val[first : first + per_mosaic] for first in range(0, len(val), per_mosaic)]
    val_batches = [MosaicBatch(val_mosaics[i : i + 8], config) for i in range(0, len(val_mosaics), 8)]
    print(f"{len(train)} training shapes, {len(val)} val shapes")

    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("w")
    model.segmentation_encoder.train()
    start, correct, seen, loss_sum, logged = time.time(), 0, 0, 0.0, 0
    for step in range(1, args.steps + 1):
        picks = torch.randint(len(train), (args.batch_size, per_mosaic)).tolist()
        batch = MosaicBatch([[shifted(train[i], generator) for i in row] for row in picks], config)
        logits = classify(model, head, batch)
        loss = F.cross_entropy(logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        correct += int((logits.argmax(-1) == batch.labels).sum())
        seen, loss_sum, logged = seen + len(batch.labels), loss_sum + loss.item(), logged + 1
        if step % args.eval_every == 0 or step == args.steps:
            model.segmentation_encoder.eval()
            with torch.no_grad():
                hits = sum(int((classify(model, head, b).argmax(-1) == b.labels).sum()) for b in val_batches)
            model.segmentation_encoder.train()
            record = {
                "step": step,
                "loss": loss_sum / logged,
                "train_acc": correct / seen,
                "val_acc": hits / len(val),
                "lr": schedule.get_last_lr()[0],
                "seconds": round(time.time() - start, 1),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            correct, seen, loss_sum, logged = 0, 0, 0.0, 0
    log.close()
    model.eval().save_pretrained(args.out / "final")
    print(f"wrote {args.out / 'final'}")


if __name__ == "__main__":
    main()
