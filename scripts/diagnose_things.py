"""Why are thing instances segmented but not classified? Per-shape figures of a trained model.

    python scripts/diagnose_things.py MODEL WORLD [--split test] [--images 40] [--closed-set]

Runs generic (panoptic) segmentation with all of the world's categories on the first ``--images``
images of a split of an ``xsam synth`` world and, for every ground-truth thing (shape), takes the
query whose mask (sigmoid > 0.5, at the image's size) has the best IoU with it. It prints how well
those queries segment (mean IoU, share above 0.5) and how they classify: whether the arg-max over the
foreground classes is the shape's class, the shape's probability, the largest foreground probability
and the background probability (softmax over the classes and background, as the panoptic inference
uses). A thing query survives the panoptic inference only if its class probability times its mask
probability stays >= 0.5 over most of its mask, so a best-IoU query with a largest foreground
probability under 0.5 can never become a segment.

Through the LLM (the default) it also prints the pairwise cosine similarity of the class embeddings
(the ``<p>name</p>`` states after the llm_projector, which the cosine class head compares the queries
with), averaged over the images, and the class head's logit scale. ``--closed-set`` runs the stage-1
segmentor (closed-set head, no LLM) instead. Findings are recorded in docs/default-model.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from xsam import XSamModel, XSamPredictor
from xsam.data.transforms import postprocess_masks, sam_scaled_size
from xsam.eval.metrics.gcg import mask_iou_matrix


@dataclass
class ThingStatistics:
    """Per shape (rows of ``shapes``): best IoU, arg-max right, p(shape), max foreground p, p(bg)."""

    names: list[str]
    num_things: int
    shapes: torch.Tensor  # (S, 5)
    cosine: torch.Tensor | None  # (C, C) mean over images; None for the closed-set segmentor

    def summary(self) -> str:
        iou, right, p_shape, p_max, p_bg = self.shapes.mean(0).tolist()
        n = len(self.shapes)
        lines = [
            f"{n} shapes; best-IoU query: mean IoU {iou:.3f}, IoU > 0.5 for "
            f"{float((self.shapes[:, 0] > 0.5).float().mean()):.0%}",
            f"its foreground arg-max is the shape: {right:.0%} (chance among the things "
            f"{1 / self.num_things:.0%}); mean p(shape) {p_shape:.3f}, mean max foreground p {p_max:.3f} "
            f"(> 0.5 for {float((self.shapes[:, 3] > 0.5).float().mean()):.0%}), "
            f"mean p(background) {p_bg:.3f}",
        ]
        if self.cosine is not None:
            width = max(len(name) for name in self.names)
            lines.append("class embeddings, pairwise cosine (mean over images):")
            lines.append(" " * width + " " + " ".join(f"{name[:6]:>6}" for name in self.names))
            for name, row in zip(self.names, self.cosine.tolist(), strict=True):
                lines.append(f"{name:>{width}} " + " ".join(f"{value:6.2f}" for value in row))
        return "\n".join(lines)


def thing_statistics(
    predictor: XSamPredictor, world: Path, split: str = "test", images: int = 40, closed_set: bool = False
) -> ThingStatistics:
    """The figures of the module docstring on the first ``images`` images of ``world``'s ``split``."""
    data = json.loads((world / f"panoptic/panoptic_{split}.json").read_text())
    things = [c["name"] for c in data["categories"] if c["isthing"]]
    stuff = [c["name"] for c in data["categories"] if not c["isthing"]]
    names = things + stuff
    instances = json.loads((world / f"instances/instances_{split}.json").read_text())
    id_to_name = {c["id"]: c["name"] for c in instances["categories"]}
    by_image: dict[int, list[dict]] = {}
    for annotation in instances["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)

    categories = f"ins: {', '.join(things)}; sem: {', '.join(stuff)}"
    canvas = predictor.model.config.segmentation_encoder.image_size
    rows, cosines = [], []
    for image in instances["images"][:images]:
        rgb = Image.open(world / "images" / split / image["file_name"]).convert("RGB")
        predictor.set_image(rgb)
        out = predictor.predict("generic", categories=categories, closed_set=closed_set).logits
        probabilities = out.class_logits[-1, 0].float().softmax(-1)  # (Q, C + 1)
        original = (rgb.height, rgb.width)
        scaled = sam_scaled_size(original, canvas)
        masks = postprocess_masks(out.mask_logits[-1, 0].float(), scaled, original, canvas) > 0
        if out.condition_embeddings is not None:
            unit = F.normalize(out.condition_embeddings[0].float(), dim=-1)
            cosines.append(unit @ unit.T)
        annotations = by_image.get(image["id"], [])
        if not annotations:
            continue
        truths = np.stack([mask_utils.decode(a["segmentation"]) for a in annotations])
        ious = torch.from_numpy(mask_iou_matrix(masks.numpy(), truths))  # (Q, G)
        for annotation, (iou, query) in zip(annotations, zip(*ious.max(0), strict=True), strict=True):
            label = names.index(id_to_name[annotation["category_id"]])
            p = probabilities[query]
            right = float(int(p[:-1].argmax()) == label)
            rows.append([float(iou), right, float(p[label]), float(p[:-1].max()), float(p[-1])])
    if not rows:
        raise ValueError(f"{world}: no annotated shapes in the first {images} {split} images")
    cosine = torch.stack(cosines).mean(0) if cosines else None
    return ThingStatistics(names, len(things), torch.tensor(rows), cosine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model directory, or 'default'")
    parser.add_argument("world", type=Path, help="an `xsam synth` output directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--closed-set", action="store_true", help="the stage-1 segmentor, no LLM")
    args = parser.parse_args()
    predictor = XSamPredictor(XSamModel.from_pretrained(args.model))
    print(thing_statistics(predictor, args.world, args.split, args.images, args.closed_set).summary())
    if not args.closed_set:
        print(f"class head logit scale {predictor.model.class_head.logit_scale.exp().item():.1f}")


if __name__ == "__main__":
    main()
