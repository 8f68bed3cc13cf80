"""``xsam synth``: generate the synthetic world (every task's data in the real public formats)."""

from __future__ import annotations

import argparse

from .common import positive


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "synth",
        help="generate the synthetic world (every task's data in the real public formats)",
        description=(
            "Procedurally generate scenes of textured stuff (sky, grass, water, sand, wall) and coloured "
            "shapes, written in the formats the readers take: COCO panoptic/instances/semantic, REFER, "
            "ReasonSeg, GranD-f GCG, COCO-Interactive, COCO-VGD and LLaVA, with train/val/test splits and "
            "an open-vocabulary split of held-out colour-shape compositions. Deterministic by seed. "
            "'xsam eval --suite synthetic --data-root OUT' evaluates a model on its test split."
        ),
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument(
        "--images", type=positive, default=100, metavar="N", help="training images (val/test get N/10 each)"
    )
    parser.add_argument("--image-size", type=positive, default=256, metavar="PX", help="image side in pixels")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate_world

    summary = generate_world(
        args.out, seed=args.seed, images=args.images, image_size=args.image_size, progress=True
    )
    counts = ", ".join(f"{split} {count}" for split, count in summary["images"].items())
    print(f"wrote the synthetic world to {args.out} ({counts} images)")
    return 0
