"""``xsam describe``: a saved model's or a preset's modules and parameter counts."""

from __future__ import annotations

import argparse

from ..config import PRESETS


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "describe",
        help="print a model's modules and parameter counts",
        description="Print the modules and parameter counts of a saved model or a preset.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="a save_pretrained directory")
    source.add_argument(
        "--preset", choices=PRESETS, default="official", help="a config preset (default: official)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import XSamConfig
    from ..modeling.xsam import XSamModel

    if args.model:
        model = XSamModel.from_pretrained(args.model)
        title = args.model
    else:
        with torch.device("meta"):  # structure only: no memory is allocated
            model = XSamModel(XSamConfig.preset(args.preset))
        title = f"preset '{args.preset}' (meta device)"
    print(f"X-SAM {title}")
    print(f"{'module':<24}{'parameters':>18}")
    total = 0
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        total += count
        print(f"{name:<24}{count:>18,}")
    print(f"{'total':<24}{total:>18,}")
    config = model.config
    print(
        f"image tokens per <image>: {config.num_image_tokens} "
        f"({config.image_encoder.num_tokens} SigLIP + {config.num_seg_tokens} SAM); "
        f"mask logits {config.mask_size}x{config.mask_size}"
    )
    return 0
