"""``xsam predict``: one task on an image or a folder of images, or every task on the examples."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..processing import DEFAULT_MAX_PIXELS
from .common import DTYPES, load_model, output_folder, positive

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
TASKS = ("auto", "generic", "open_vocab", "referring", "reasoning", "gcg", "interactive", "vgd", "chat")
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def _numbers(text: str, size: int, what: str) -> list[float]:
    values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if len(values) != size:
        raise argparse.ArgumentTypeError(f"{what} needs {size} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    return _numbers(text, 2, "--point X,Y")


def _box(text: str) -> list[float]:
    return _numbers(text, 4, "--box X0,Y0,X1,Y1")


def _scribble(text: str) -> list[list[float]]:
    points = [_numbers(p, 2, "--scribble X,Y;X,Y;...") for p in text.split(";") if p.strip()]
    if len(points) < 2:
        raise argparse.ArgumentTypeError("--scribble needs at least two points: X,Y;X,Y;...")
    return points


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "predict",
        help="segment images with one task; writes an overlay PNG and a JSON per image",
        description=(
            "Run one task on an image or a folder of images. Each image is encoded once. Writes "
            "<name>_<task>.png (coloured masks, labels, generated text) and <name>_<task>.json (COCO RLE "
            "masks, labels, scores, text) to --out."
        ),
        epilog=(
            "examples:\n"
            "  xsam predict --model M --image a.jpg --task generic --categories 'ins: dog; sem: sky'\n"
            "  xsam predict --model M --image photo.jpg --task referring --text 'the dog on the left'\n"
            "  xsam predict --model M --image photo.jpg --task interactive --point 120,80\n"
            "  xsam predict --model M --image photos/ --task gcg"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="default",
        metavar="DIR",
        help="a save_pretrained / xsam convert directory (default: the bundled small model)",
    )
    parser.add_argument(
        "--examples",
        action="store_true",
        help="run every task on the bundled example images (no --image / --task); writes examples.png",
    )
    parser.add_argument("--image", metavar="PATH", help="an image file or a folder of images")
    parser.add_argument(
        "--task", choices=TASKS, help="the task, or auto: chosen from the prompt (see docs/inputs.md)"
    )
    parser.add_argument("--text", help="expression (referring), query (reasoning) or message (chat)")
    parser.add_argument(
        "--categories", help="generic/open_vocab classes, e.g. 'ins: person, dog; sem: sky, grass'"
    )
    parser.add_argument(
        "--point", type=_point, action="append", metavar="X,Y", help="point prompt (repeatable)"
    )
    parser.add_argument(
        "--box", type=_box, action="append", metavar="X0,Y0,X1,Y1", help="box prompt (repeatable)"
    )
    parser.add_argument(
        "--scribble",
        type=_scribble,
        action="append",
        metavar="X,Y;X,Y;...",
        help="scribble prompt (repeatable)",
    )
    parser.add_argument(
        "--mask", action="append", metavar="PNG", help="mask prompt, white = region (repeatable)"
    )
    parser.add_argument("--threshold", type=float, help="score threshold (default: the task's demo setting)")
    parser.add_argument("--max-new-tokens", type=positive, default=512, help="generation budget (gcg, chat)")
    parser.add_argument("--out", default="xsam-predictions", metavar="DIR", help="output folder")
    parser.add_argument("--no-scores", action="store_true", help="label overlay masks without their scores")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype")
    parser.add_argument(
        "--max-image-pixels",
        type=positive,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--no-exif-orientation",
        action="store_true",
        help="keep the stored pixel frame instead of applying the EXIF orientation (coordinates and masks "
        "are in the frame used)",
    )
    return parser


def _images(path: str) -> list[Path]:
    source = Path(path)
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
        return images
    if not source.is_file():
        raise FileNotFoundError(f"image not found: {source}")
    return [source]


def _mask_prompts(paths: list[str] | None, policy: Any) -> Any:
    """``--mask`` images as ``(N, H, W)`` bool (white = region), read with the images' policy."""
    import numpy as np

    from ..processing import load_image

    if not paths:
        return None
    masks = [np.asarray(load_image(path, policy=policy).convert("L")) > 128 for path in paths]
    if len({mask.shape for mask in masks}) > 1:
        raise ValueError(f"--mask images differ in size: {[mask.shape[::-1] for mask in masks]}")
    return np.stack(masks)


def output_names(images: list[Path], task: str) -> dict[Path, str]:
    """``<stem>_<task>`` per image; images sharing a stem (``a.jpg``, ``a.png``) keep their suffix in
    the name (``a_jpg_<task>``), so no two images write to the same files."""
    stems = [path.stem for path in images]
    return {
        path: f"{path.stem}_{path.suffix.lstrip('.').lower()}_{task}"
        if stems.count(path.stem) > 1
        else f"{path.stem}_{task}"
        for path in images
    }


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..inference.predictor import XSamPredictor
    from ..processing import ImagePolicy

    if args.examples:
        return _run_examples(args)
    missing = [flag for flag, value in (("--image", args.image), ("--task", args.task)) if value is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --examples)")
    policy = ImagePolicy(max_pixels=args.max_image_pixels, exif_transpose=not args.no_exif_orientation)
    images = _images(args.image)
    out = output_folder(args.out)
    request = {
        "task": args.task,
        "text": args.text,
        "categories": args.categories,
        "points": args.point,
        "boxes": args.box,
        "scribbles": args.scribble,
        "masks": _mask_prompts(args.mask, policy),
        "threshold": args.threshold,
        "max_new_tokens": args.max_new_tokens,
    }
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device), image_policy=policy)
    names, failures = output_names(images, args.task), []
    for path in tqdm(images, desc="images", disable=len(images) == 1):
        try:
            predictor.set_image(path)
            prediction = predictor.predict(**request)
        except (ValueError, FileNotFoundError) as error:
            if len(images) == 1:
                raise
            failures.append(f"{path.name}: {error}")
            print(f"skipped {path.name}: {error}", file=sys.stderr)
            continue
        _write(out, names[path], predictor, prediction, {"image": str(path)}, path.stem, not args.no_scores)
        summary = prediction.text if prediction.text else f"{len(prediction.masks)} masks"
        print(f"{path.name}: {summary} -> {out / names[path]}.{{png,json}}")
    if failures:
        raise ValueError(f"{len(failures)} of {len(images)} images failed: " + "; ".join(failures))
    return 0


def _write(
    out: Path, name: str, predictor: Any, prediction: Any, header: dict, image_id: str, scores: bool
) -> Any:
    """The overlay PNG and the JSON of one prediction, each written atomically; returns the overlay."""
    from ..inference.visualize import overlay
    from ..processing import png_bytes, write_atomically

    drawn = overlay(predictor.image, prediction, scores=scores)
    write_atomically(out / f"{name}.png", png_bytes(drawn))
    record = {**header, **prediction.to_dict(image_id=image_id)}
    write_atomically(out / f"{name}.json", json.dumps(record, indent=1))
    return drawn


def _run_examples(args: argparse.Namespace) -> int:
    """Every task on the bundled example images: one overlay + JSON per prompt and examples.png."""
    from ..inference.predictor import XSamPredictor
    from ..inference.visualize import contact_sheet
    from ..processing import png_bytes, write_atomically

    examples = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device))
    out = output_folder(args.out)
    panels = []
    for example in examples:
        path = EXAMPLES / example["image"]
        predictor.set_image(path)
        for request in example["requests"]:
            prediction = predictor.predict(**request)
            name = f"{path.stem}_{request['task']}"
            header = {"image": example["image"], "request": request}
            drawn = _write(out, name, predictor, prediction, header, path.stem, not args.no_scores)
            panels.append((_example_title(request), drawn))
            summary = prediction.text if prediction.text else f"{len(prediction.masks)} masks"
            print(f"{name}: {summary}")
    write_atomically(out / "examples.png", png_bytes(contact_sheet(panels)))
    print(f"wrote {len(panels)} overlays and {out / 'examples.png'}")
    return 0


def _example_title(request: dict) -> str:
    detail = request.get("text") or ""
    if request.get("points"):
        detail = f"point {request['points'][0]}"
    elif request.get("boxes"):
        detail = "box prompt"
    elif request["task"] in ("generic", "open_vocab"):
        detail = "panoptic"
    title = f"{request['task']}: {detail}" if detail else request["task"]
    return title if len(title) <= 42 else title[:41] + "…"
