"""``xsam convert``: a released X-SAM checkpoint -> a ``from_pretrained`` directory."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "convert",
        help="convert a released X-SAM checkpoint (pytorch_model.bin) to an xsam-torch directory",
        description=(
            "Convert an official X-SAM pytorch_model.bin (stage 1, 2 or 3) into a directory that "
            "XSamModel.from_pretrained loads. The file is read with weights_only=True and mmap. An "
            "existing --out is replaced only with --overwrite, and atomically: the old model stays "
            "intact until the new one is complete."
        ),
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="official pytorch_model.bin")
    configs = parser.add_mutually_exclusive_group()
    configs.add_argument("--inits", metavar="DIR", help="official inits/ folder with the component configs")
    configs.add_argument("--component-configs", metavar="JSON", help="one JSON holding the component configs")
    parser.add_argument("--tokenizer", metavar="DIR", help="Phi-3 tokenizer folder (default: bundled copy)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, non-empty --out (atomically; other files in it are kept)",
    )
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="cast weights (default: as stored)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..convert.official import convert_checkpoint

    result = convert_checkpoint(
        args.checkpoint,
        args.out,
        inits=args.inits,
        component_configs=args.component_configs,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: {len(result.state)} tensors")
    if result.missing_modules:
        print(f"partial checkpoint: modules left to initialise: {', '.join(result.missing_modules)}")
    return 0
