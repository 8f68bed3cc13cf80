"""``xsam predict``: one task on an image or a folder of images, or every task on the examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import DTYPES, load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
TASKS = ("generic", "open_vocab", "referring", "reasoning", "gcg", "interactive", "vgd", "chat")
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
    parser.add_argument("--task", choices=TASKS)
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
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (gcg, chat)")
    parser.add_argument("--out", default="xsam-predictions", metavar="DIR", help="output folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype")
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


def _mask_prompts(paths: list[str] | None) -> Any:
    import numpy as np
    from PIL import Image

    if not paths:
        return None
    return np.stack([np.asarray(Image.open(path).convert("L")) > 128 for path in paths])


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..inference.predictor import XSamPredictor

    if args.examples:
        return _run_examples(args)
    missing = [flag for flag, value in (("--image", args.image), ("--task", args.task)) if value is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --examples)")
    images = _images(args.image)
    masks = _mask_prompts(args.mask)
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    request = {
        "task": args.task,
        "text": args.text,
        "categories": args.categories,
        "points": args.point,
        "boxes": args.box,
        "scribbles": args.scribble,
        "masks": masks,
        "threshold": args.threshold,
        "max_new_tokens": args.max_new_tokens,
    }
    for path in tqdm(images, desc="images", disable=len(images) == 1):
        predictor.set_image(path)
        try:
            prediction = predictor.predict(**request)
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from error
        name = f"{path.stem}_{args.task}"
        _write(out, name, predictor, prediction, {"image": str(path)}, path.stem)
        summary = prediction.text if prediction.text else f"{len(prediction.masks)} masks"
        print(f"{path.name}: {summary} -> {out / name}.{{png,json}}")
    return 0


def _write(out: Path, name: str, predictor: Any, prediction: Any, header: dict, image_id: str) -> Any:
    """The overlay PNG and the JSON of one prediction; returns the overlay."""
    from ..inference.visualize import overlay

    drawn = overlay(predictor.image, prediction)
    drawn.save(out / f"{name}.png")
    record = {**header, **prediction.to_dict(image_id=image_id)}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return drawn


def _run_examples(args: argparse.Namespace) -> int:
    """Every task on the bundled example images: one overlay + JSON per prompt and examples.png."""
    from ..inference.predictor import XSamPredictor
    from ..inference.visualize import contact_sheet

    examples = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = []
    for example in examples:
        path = EXAMPLES / example["image"]
        predictor.set_image(path)
        for request in example["requests"]:
            prediction = predictor.predict(**request)
            name = f"{path.stem}_{request['task']}"
            header = {"image": example["image"], "request": request}
            panels.append(
                (_example_title(request), _write(out, name, predictor, prediction, header, path.stem))
            )
            summary = prediction.text if prediction.text else f"{len(prediction.masks)} masks"
            print(f"{name}: {summary}")
    contact_sheet(panels).save(out / "examples.png")
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
