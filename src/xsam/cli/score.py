"""``xsam score``: metrics of saved predictions against ground truth, no model needed."""

from __future__ import annotations

import argparse

from .common import SCORE_NAMES, LazyHelpFormatter, positive


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "score",
        help="score saved predictions against ground truth (no model needed)",
        description=(
            "Print the metrics of saved predictions as one JSON object (fractions in [0, 1]). Formats: "
            "panoptic = COCO panoptic JSON + PNG folder (gt and pred); semantic = label-PNG folders, "
            "255 ignore; instance/vgd = COCO instances JSON + COCO results; referring/reasoning/"
            "interactive (mask_iou) = JSON lists of {id, segmentation RLE[, ignore RLE]}; gcg = GranD-f "
            "mask and caption GT JSONs + a list of {image_id, caption, masks}. See docs/evaluation.md."
        ),
        epilog=f"--task takes a metric family or a task scored by one: {SCORE_NAMES}",
        formatter_class=LazyHelpFormatter,
    )
    parser.add_argument("--task", required=True, metavar="NAME", help="metric family or task (listed below)")
    parser.add_argument("--gt-json", metavar="PATH", help="ground-truth JSON (GCG: the mask GT)")
    parser.add_argument("--gt-dir", metavar="DIR", help="ground-truth PNG folder (panoptic, semantic)")
    parser.add_argument("--pred-json", metavar="PATH", help="prediction JSON")
    parser.add_argument("--pred-dir", metavar="DIR", help="prediction PNG folder (panoptic, semantic)")
    parser.add_argument("--caption-gt-json", metavar="PATH", help="GCG caption ground truth")
    parser.add_argument("--num-classes", type=positive, metavar="N", help="semantic: number of classes")
    return parser


def run(args: argparse.Namespace) -> int:
    import json

    from ..eval.score import score_files

    metrics = score_files(
        args.task,
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        pred_json=args.pred_json,
        pred_dir=args.pred_dir,
        caption_gt_json=args.caption_gt_json,
        num_classes=args.num_classes,
    )
    print(json.dumps({"task": args.task, "units": "fraction", **metrics}))
    return 0
