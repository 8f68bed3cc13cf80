"""How fast can a from-scratch encoder learn what the closed-set head needs? A direct probe.

    python scripts/shape_probe.py WORLD --encoder sam --label shape --steps 1000

Trains a randomly initialised encoder and a linear head with cross-entropy on the encoder's features
averaged inside each ground-truth instance mask of a synthetic world's training split (``xsam synth``),
which is the pooling the mask decoder's masked attention does, and prints the running training
accuracy and the val accuracy every 50 steps. ``--encoder sam`` is the small preset's SAM ViT (its
last block, 32 x 32 at stride 8); ``--encoder cnn`` a 5-layer CNN of the same stride and width.
``--label colour`` is the control: colour needs no shape information. Findings are recorded in
docs/default-model.md ("Stage-1 diagnostics").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from xsam.config import XSamConfig
from xsam.data.transforms import preprocess_sam
from xsam.modeling.segmentation_encoder import SegmentationEncoder

Example = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pixels (3,S,S), masks (M,g,g), labels (M,)


class SamFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = SegmentationEncoder(XSamConfig.small().segmentation_encoder)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).connector_inputs[-1]  # (B, g, g, C), the last block


class CnnFeatures(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        layers, channels = [], 3
        for out, stride, dilation in ((32, 2, 1), (64, 2, 1), (width, 2, 1), (width, 1, 1), (width, 1, 2)):
            layers += [nn.Conv2d(channels, out, 3, stride, dilation, dilation=dilation), nn.GELU()]
            channels = out
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels).permute(0, 2, 3, 1)


def load_split(world: Path, split: str, limit: int, label: str, grid: int) -> list[Example]:
    data = json.loads((world / f"instances/instances_{split}.json").read_text())
    shape_index = {category["id"]: i for i, category in enumerate(data["categories"])}
    colours = json.loads((world / "world.json").read_text())["colours"]
    by_image: dict[int, list[dict]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    config = XSamConfig.small().segmentation_encoder
    examples = []
    for image in data["images"]:
        annotations = by_image.get(image["id"], [])
        masks, labels = [], []
        for annotation in annotations:
            mask = torch.from_numpy(mask_utils.decode(annotation["segmentation"])).float()
            mask = F.adaptive_avg_pool2d(mask[None, None], grid)[0, 0]
            if mask.sum() < 0.5:
                continue
            masks.append(mask / mask.sum())
            if label == "shape":
                labels.append(shape_index[annotation["category_id"]])
            else:
                labels.append(colours.index(annotation["attributes"]["colour"]))
        if masks:
            rgb = Image.open(world / "images" / split / image["file_name"]).convert("RGB")
            examples.append(
                (preprocess_sam(rgb, config).pixel_values, torch.stack(masks), torch.tensor(labels))
            )
        if len(examples) == limit:
            break
    return examples


def pooled_logits(
    encoder: nn.Module, head: nn.Linear, batch: list[Example]
) -> tuple[torch.Tensor, torch.Tensor]:
    features = encoder(torch.stack([pixels for pixels, _, _ in batch]))
    logits = [head(torch.einsum("mhw,hwc->mc", masks, features[i])) for i, (_, masks, _) in enumerate(batch)]
    return torch.cat(logits), torch.cat([labels for _, _, labels in batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", type=Path, help="an `xsam synth` output directory")
    parser.add_argument("--encoder", choices=("sam", "cnn"), default="sam")
    parser.add_argument("--label", choices=("shape", "colour"), default="shape")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    width = XSamConfig.small().segmentation_encoder.hidden_size
    encoder = SamFeatures() if args.encoder == "sam" else CnnFeatures(width)
    grid = XSamConfig.small().segmentation_encoder.grid_size
    train = load_split(args.world, "train", args.train_images, args.label, grid)
    val = load_split(args.world, "val", args.val_images, args.label, grid)
    head = nn.Linear(width, max(int(labels.max()) for _, _, labels in train + val) + 1)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05)
    print(f"{args.encoder} encoder, {args.label} labels: {len(train)} train / {len(val)} val images")
    start, correct, seen = time.time(), 0, 0
    for step in range(1, args.steps + 1):
        batch = [train[i] for i in torch.randint(len(train), (args.batch_size,))]
        logits, labels = pooled_logits(encoder, head, batch)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        correct, seen = correct + int((logits.argmax(-1) == labels).sum()), seen + len(labels)
        if step % 50 == 0:
            with torch.no_grad():
                hits = total = 0
                for first in range(0, len(val), 8):
                    val_logits, val_labels = pooled_logits(encoder, head, val[first : first + 8])
                    hits, total = (
                        hits + int((val_logits.argmax(-1) == val_labels).sum()),
                        total + len(val_labels),
                    )
            print(
                f"step {step:5d}  train acc {correct / seen:.2f}  val acc {hits / total:.2f}"
                f"  ({time.time() - start:.0f} s)",
                flush=True,
            )
            correct = seen = 0


if __name__ == "__main__":
    main()
