"""``xsam`` command line. Each subcommand imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _describe(args: argparse.Namespace) -> int:
    import torch

    from .config import XSamConfig
    from .modeling.xsam import XSamModel

    if args.model:
        model = XSamModel.from_pretrained(args.model)
        title = args.model
    else:
        preset = getattr(XSamConfig, args.preset)()
        with torch.device("meta"):  # structure only: no memory is allocated
            model = XSamModel(preset)
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


def _convert(args: argparse.Namespace) -> int:
    from .convert.official import ConversionError, convert_checkpoint

    try:
        result = convert_checkpoint(
            args.checkpoint,
            args.out,
            inits=args.inits,
            component_configs=args.component_configs,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
        )
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"xsam convert: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(result.state)} tensors")
    if result.missing_modules:
        print(f"partial checkpoint: modules left to initialise: {', '.join(result.missing_modules)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsam",
        description="X-SAM: one multimodal LLM for any segmentation task, in plain PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    describe = commands.add_parser(
        "describe",
        help="print a model's modules and parameter counts",
        description="Print the modules and parameter counts of a saved model or a preset.",
    )
    source = describe.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="a save_pretrained directory")
    source.add_argument(
        "--preset",
        choices=["official", "tiny"],
        default="official",
        help="a config preset (default: official)",
    )
    describe.set_defaults(handler=_describe)

    convert = commands.add_parser(
        "convert",
        help="convert a released X-SAM checkpoint (pytorch_model.bin) to an xsam-torch directory",
        description=(
            "Convert an official X-SAM pytorch_model.bin (stage 1, 2 or 3) into a directory that "
            "XSamModel.from_pretrained loads. The file is read with weights_only=True and mmap."
        ),
    )
    convert.add_argument("--checkpoint", required=True, metavar="PATH", help="official pytorch_model.bin")
    configs = convert.add_mutually_exclusive_group()
    configs.add_argument("--inits", metavar="DIR", help="official inits/ folder with the component configs")
    configs.add_argument("--component-configs", metavar="JSON", help="one JSON holding the component configs")
    convert.add_argument("--tokenizer", metavar="DIR", help="Phi-3 tokenizer folder (default: bundled copy)")
    convert.add_argument("--out", required=True, metavar="DIR", help="output directory")
    convert.add_argument("--dtype", choices=["bf16", "fp32"], help="cast weights (default: as stored)")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
