"""``xsam`` command line. Each subcommand imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _pairs(text: str, size: int, what: str) -> list[float]:
    values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if len(values) != size:
        raise argparse.ArgumentTypeError(f"{what} needs {size} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    return _pairs(text, 2, "--point X,Y")


def _box(text: str) -> list[float]:
    return _pairs(text, 4, "--box X0,Y0,X1,Y1")


def _scribble(text: str) -> list[list[float]]:
    points = [_pairs(p, 2, "--scribble X,Y;X,Y;...") for p in text.split(";") if p.strip()]
    if len(points) < 2:
        raise argparse.ArgumentTypeError("--scribble needs at least two points: X,Y;X,Y;...")
    return points


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


def _predict(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from .inference.predictor import XSamPredictor
    from .inference.visualize import overlay

    if args.examples:
        return _predict_examples(args)
    missing = [flag for flag, value in (("--image", args.image), ("--task", args.task)) if value is None]
    if missing:
        print(f"xsam predict: {' and '.join(missing)} required (or --examples)", file=sys.stderr)
        return 2
    try:
        images = _images(args.image)
        masks = None
        if args.mask:
            masks = np.stack([np.asarray(Image.open(m).convert("L")) > 128 for m in args.mask])
        model = _load_model(args)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"xsam predict: {error}", file=sys.stderr)
        return 2
    predictor = XSamPredictor(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(images, desc="images", disable=len(images) == 1):
        predictor.set_image(path)
        try:
            prediction = predictor.predict(
                args.task,
                text=args.text,
                categories=args.categories,
                points=args.point,
                boxes=args.box,
                scribbles=args.scribble,
                masks=masks,
                threshold=args.threshold,
                max_new_tokens=args.max_new_tokens,
            )
        except (ValueError, RuntimeError) as error:
            print(f"xsam predict: {path.name}: {error}", file=sys.stderr)
            return 2
        image = Image.open(path).convert("RGB")
        overlay(image, prediction).save(out / f"{path.stem}_{args.task}.png")
        record = {"image": str(path), **prediction.to_dict(image_id=path.stem)}
        (out / f"{path.stem}_{args.task}.json").write_text(json.dumps(record, indent=1))
        summary = prediction.text if prediction.text else f"{len(prediction.masks)} masks"
        print(f"{path.name}: {summary} -> {out / (path.stem + '_' + args.task)}.{{png,json}}")
    return 0


def _train_config(args: argparse.Namespace):
    """The model config the samples are built for: the init directory's, else the preset's."""
    import json

    from .config import XSamConfig
    from .modeling.xsam import FORMAT_KEY

    if args.init is None:
        return getattr(XSamConfig, args.preset)()
    config_path = Path(args.init) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"--init {args.init}: {config_path.name} not found (not a save_pretrained directory)"
        )
    data = json.loads(config_path.read_text())
    data.pop(FORMAT_KEY, None)
    return XSamConfig.from_dict(data)


def _key_values(items: Sequence[str] | None, flag: str, convert=str) -> dict:
    """``KEY=VALUE`` command-line items as a dict, values passed through ``convert``."""
    pairs = {}
    for item in items or []:
        key, equals, value = (part.strip() for part in item.partition("="))
        try:
            pairs[key] = convert(value)
        except ValueError:
            equals = ""
        if not equals or not key or not value:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
    return pairs


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from .data.samples import SampleOptions, SampleTooLongError
    from .data.sources import build_mixture, parse_dataset_spec
    from .tokenizer import load_tokenizer
    from .train.loop import TrainArguments, train
    from .train.stages import stage_preset

    try:
        stage = stage_preset(args.stage)
        if args.lr is not None:  # e.g. a model trained from scratch needs more than the release's rates
            stage = dataclasses.replace(stage, lr=args.lr)
        if args.decay is not None:
            stage = dataclasses.replace(stage, decay=args.decay)
        if args.grad_clip is not None:
            stage = dataclasses.replace(stage, grad_clip=args.grad_clip)
        if args.scale_jitter is not None:
            stage = dataclasses.replace(stage, scale_jitter=args.scale_jitter or None)
        if args.lr_multiplier:
            multipliers = {
                **stage.lr_multipliers,
                **_key_values(args.lr_multiplier, "--lr-multiplier", float),
            }
            stage = dataclasses.replace(stage, lr_multipliers=multipliers)
        specs = [parse_dataset_spec(text) for text in args.data]
        config = _train_config(args)
        has_tokenizer = args.init is not None and (Path(args.init) / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(args.init if has_tokenizer else None, tokens=config.tokens)
        dataset, _ = build_mixture(
            specs,
            config,
            tokenizer,
            data_root=Path(args.data_root) if args.data_root else None,
            train=True,
            seed=args.seed,
            options=SampleOptions(scale_range=stage.scale_jitter, closed_set=stage.closed_set),
            pad_to_square=stage.image_pad_to_square,
        )
    except (FileNotFoundError, ValueError, KeyError, SampleTooLongError) as error:
        print(f"xsam train: {error}", file=sys.stderr)
        return 2
    arguments = TrainArguments(
        stage=stage,
        output_dir=args.output,
        dataset=dataset,
        init=args.init,
        config=args.preset,
        max_steps=args.max_steps,
        epochs=args.epochs if args.epochs is not None else 1.0,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        log_every=args.log_every,
        save_every=args.save_every,
        seed=args.seed,
        resume=args.resume,
        num_workers=args.num_workers,
        log_with=args.log_with,
    )
    if args.num_points is not None:
        arguments.num_points = args.num_points
    if args.class_weight is not None:
        arguments.class_weight = args.class_weight
    if args.num_closed_set_classes is not None:
        arguments.num_closed_set_classes = args.num_closed_set_classes
    try:
        final = train(arguments)
    except ValueError as error:  # e.g. a dataset too small for one batch per rank
        print(f"xsam train: {error}", file=sys.stderr)
        return 2
    print(f"wrote {final}")
    return 0


def _add_describe(commands: argparse._SubParsersAction) -> None:
    describe = commands.add_parser(
        "describe",
        help="print a model's modules and parameter counts",
        description="Print the modules and parameter counts of a saved model or a preset.",
    )
    source = describe.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="a save_pretrained directory")
    source.add_argument(
        "--preset",
        choices=["official", "small", "tiny"],
        default="official",
        help="a config preset (default: official)",
    )
    describe.set_defaults(handler=_describe)


def _add_convert(commands: argparse._SubParsersAction) -> None:
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


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
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
    predict.add_argument(
        "--model",
        default="default",
        metavar="DIR",
        help="a save_pretrained / xsam convert directory (default: the bundled small model)",
    )
    predict.add_argument(
        "--examples",
        action="store_true",
        help="run every task on the bundled example images (no --image / --task); writes examples.png",
    )
    predict.add_argument("--image", metavar="PATH", help="an image file or a folder of images")
    predict.add_argument(
        "--task",
        choices=["generic", "open_vocab", "referring", "reasoning", "gcg", "interactive", "vgd", "chat"],
    )
    predict.add_argument("--text", help="expression (referring), query (reasoning) or message (chat)")
    predict.add_argument(
        "--categories", help="generic/open_vocab classes, e.g. 'ins: person, dog; sem: sky, grass'"
    )
    predict.add_argument(
        "--point", type=_point, action="append", metavar="X,Y", help="point prompt (repeatable)"
    )
    predict.add_argument(
        "--box", type=_box, action="append", metavar="X0,Y0,X1,Y1", help="box prompt (repeatable)"
    )
    predict.add_argument(
        "--scribble",
        type=_scribble,
        action="append",
        metavar="X,Y;X,Y;...",
        help="scribble prompt (repeatable)",
    )
    predict.add_argument(
        "--mask", action="append", metavar="PNG", help="mask prompt, white = region (repeatable)"
    )
    predict.add_argument("--threshold", type=float, help="score threshold (default: the task's demo setting)")
    predict.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (gcg, chat)")
    predict.add_argument("--out", default="xsam-predictions", metavar="DIR", help="output folder")
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    predict.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype")
    predict.set_defaults(handler=_predict)


def _load_model(args: argparse.Namespace, device: Any = None):
    """``args.model`` in ``args.dtype`` on ``device`` (default: ``args.device``)."""
    import torch

    from .modeling.xsam import XSamModel

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return XSamModel.from_pretrained(args.model, dtype=dtype, device=device or args.device)


def _predict_examples(args: argparse.Namespace) -> int:
    """Every task on the bundled example images: one overlay + JSON per prompt and examples.png."""
    import json

    from PIL import Image

    from .inference.predictor import XSamPredictor
    from .inference.visualize import contact_sheet, overlay

    folder = Path(__file__).resolve().parent / "assets" / "examples"
    try:
        examples = json.loads((folder / "examples.json").read_text())["examples"]
        model = _load_model(args)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"xsam predict: {error}", file=sys.stderr)
        return 2
    predictor = XSamPredictor(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = []
    for example in examples:
        path = folder / example["image"]
        predictor.set_image(path)
        image = Image.open(path).convert("RGB")
        for request in example["requests"]:
            prediction = predictor.predict(**request)
            task = request["task"]
            name = f"{path.stem}_{task}"
            drawn = overlay(image, prediction)
            drawn.save(out / f"{name}.png")
            record = {"image": example["image"], "request": request, **prediction.to_dict(image_id=path.stem)}
            (out / f"{name}.json").write_text(json.dumps(record, indent=1))
            panels.append((_example_title(request), drawn))
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _scale_range(text: str) -> tuple[float, float] | tuple[()]:
    """``LOW,HIGH`` (0 < LOW <= HIGH) as a pair; ``none`` as ``()`` (no jitter)."""
    if text.strip().lower() == "none":
        return ()
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or none, got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return low, high


_DATA_FORMATS, _BENCHMARKS = "{data formats}", "{benchmarks}"


class _LazyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in the data formats and the benchmark table only when help is printed (building them
    imports torch)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if _DATA_FORMATS in text:
            from .data.sources import readers_help

            text = text.replace(_DATA_FORMATS, readers_help())
        if _BENCHMARKS in text:
            from .eval.benchmarks import benchmarks_help

            text = text.replace(_BENCHMARKS, benchmarks_help())
        return super()._fill_text(text, width, indent)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train one stage (seg_finetune / align_pretrain / mixed_finetune) with HF Accelerate",
        description=(
            "Train one X-SAM stage on a mixture of datasets. Every optimisation step draws all its "
            "micro-batches, on every process, from one source. Writes log.jsonl (one JSON line per step), "
            "checkpoints/ and final/ (a save_pretrained directory) to --output. Multi-GPU: run through "
            "'accelerate launch --config_file configs/accelerate/ddp.yaml -m xsam.cli train ...'."
        ),
        epilog=(
            "--data SPEC is FORMAT:key=value,key=value (relative paths join root=, else --data-root).\n"
            f"{_DATA_FORMATS}\n\n"
            "examples:\n"
            "  xsam train --stage seg_finetune --preset official --output runs/s1 \\\n"
            "      --data coco_panoptic:root=coco,annotations=panoptic_train2017.json,"
            "png_dir=panoptic_train2017,image_dir=train2017\n"
            "  accelerate launch --config_file configs/accelerate/ddp.yaml -m xsam.cli train \\\n"
            "      --stage mixed_finetune --init runs/s2/final --output runs/s3 --data ... --data ..."
        ),
        formatter_class=_LazyHelpFormatter,
    )
    train.add_argument(
        "--stage",
        required=True,
        choices=["seg_finetune", "align_pretrain", "mixed_finetune"],
        help="the stage preset (modules, learning rates, losses)",
    )
    train.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SPEC",
        help="a data source FORMAT:key=value,... (repeatable; see the formats below)",
    )
    train.add_argument("--output", required=True, metavar="DIR", help="run folder (log, checkpoints, final/)")
    train.add_argument(
        "--init",
        metavar="DIR",
        help="save_pretrained / xsam convert directory to start from (missing modules stay random)",
    )
    train.add_argument(
        "--preset",
        choices=["tiny", "small", "official"],
        default="official",
        help="config of a random model when --init is not given (default: official)",
    )
    train.add_argument("--data-root", metavar="DIR", help="folder that relative spec paths are joined to")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=_positive, metavar="N", help="optimisation steps")
    length.add_argument("--epochs", type=float, metavar="E", help="passes over the mixture (default: 1)")
    train.add_argument(
        "--batch-size", type=_positive, default=4, metavar="N", help="samples per device per micro-batch"
    )
    train.add_argument("--grad-accum", type=_positive, default=1, metavar="N", help="micro-batches per step")
    train.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    train.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the LLM's activations in backward"
    )
    train.add_argument(
        "--save-every", type=_positive, metavar="N", help="checkpoint period in steps (default: end only)"
    )
    train.add_argument(
        "--log-every", type=_positive, default=10, metavar="N", help="console logging period in steps"
    )
    train.add_argument("--seed", type=int, default=0, metavar="S")
    _add_preset_overrides(train)
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --output"
    )
    train.add_argument("--num-workers", type=int, default=0, metavar="N", help="data-loader worker processes")
    train.add_argument(
        "--log-with", metavar="TRACKER", help="an Accelerate tracker (tensorboard, wandb, ...)"
    )
    train.set_defaults(handler=_train)


def _add_preset_overrides(train: argparse.ArgumentParser) -> None:
    """Options that change the stage preset's recipe (a model trained from scratch needs them)."""
    group = train.add_argument_group("overrides of the stage preset")
    group.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="base learning rate (default: the stage preset's, the release's)",
    )
    group.add_argument(
        "--decay",
        choices=["step", "cosine"],
        help="learning-rate decay after warmup (default: the stage preset's; step decay suits long runs)",
    )
    group.add_argument(
        "--grad-clip",
        type=_positive_float,
        metavar="NORM",
        help="clip the gradient's total norm to NORM (default: the stage preset's, 0.01 in stage 1 "
        "as Mask2Former; from random weights 1.0 keeps Adam's updates of small gradients undamped)",
    )
    group.add_argument(
        "--lr-multiplier",
        action="append",
        metavar="PREFIX=FACTOR",
        help="learning-rate factor of the modules under a name prefix, over the preset's (repeatable; "
        "0 freezes them)",
    )
    group.add_argument(
        "--num-closed-set-classes",
        type=_positive,
        metavar="N",
        help="stage 1: closed-set head size of a fresh model (default: 133, COCO panoptic)",
    )
    group.add_argument(
        "--scale-jitter",
        type=_scale_range,
        metavar="LOW,HIGH|none",
        help="random scale range of the SAM view (default: the stage preset's, 0.1,2.0 in stage 1)",
    )
    group.add_argument(
        "--num-points",
        type=_positive,
        metavar="N",
        help="point samples per mask of the segmentation loss (default: 12544, the release)",
    )
    group.add_argument(
        "--class-weight",
        type=_positive_float,
        metavar="W",
        help="weight of the classification loss and matching cost (default: 2.0, the release)",
    )


def _eval(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .distributed import finish_processes
    from .eval.benchmarks import get_benchmark, get_suite
    from .eval.evaluate import evaluate_benchmark, suite_summary, write_results
    from .inference.predictor import XSamPredictor

    state = PartialState()
    try:
        suite = get_suite(args.suite) if args.suite else None
        if suite is not None:
            benchmarks = [entry.benchmark for entry in suite]
        else:
            names = [name.strip() for text in args.benchmark for name in text.split(",") if name.strip()]
            benchmarks = [get_benchmark(name) for name in names]
        paths = _key_values(args.path, "--path")
        if paths and len(benchmarks) > 1:
            raise ValueError("--path applies to one benchmark at a time")
        model = _load_model(args, device=args.device or state.device)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"xsam eval: {error}", file=sys.stderr)
        return 2
    predictor = XSamPredictor(model)
    results = []
    for benchmark in benchmarks:
        try:
            result = evaluate_benchmark(
                predictor,
                benchmark,
                data_root=args.data_root,
                paths=paths,
                limit=args.limit,
                out_dir=args.out,
                save_predictions=args.save_predictions,
                max_new_tokens=args.max_new_tokens,
            )
        except (FileNotFoundError, ValueError) as error:
            print(f"xsam eval: {benchmark.name}: {error}", file=sys.stderr)
            return 2
        results.append(result)
        if state.is_main_process:
            shown = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics.items())
            print(f"{benchmark.name} ({result.num_samples} samples): {shown}")
    if state.is_main_process:
        summary = suite_summary(suite, results) if suite is not None else None
        written = write_results(results, args.out, model=str(args.model), summary=summary)
        if summary is not None:
            print(", ".join(f"{key} {100 * value:.2f}" for key, value in summary.items()) + " (%)")
        print(f"results: {written['results.json']} and {written['results.md']}")
    finish_processes()
    return 0


def _score(args: argparse.Namespace) -> int:
    import json

    from .eval.score import score_files

    try:
        metrics = score_files(
            args.task,
            gt_json=args.gt_json,
            gt_dir=args.gt_dir,
            pred_json=args.pred_json,
            pred_dir=args.pred_dir,
            caption_gt_json=args.caption_gt_json,
            num_classes=args.num_classes,
        )
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"xsam score: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"task": args.task, "units": "fraction", **metrics}))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_world

    try:
        summary = generate_world(
            args.out, seed=args.seed, images=args.images, image_size=args.image_size, progress=True
        )
    except (FileExistsError, ValueError) as error:
        print(f"xsam synth: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {count}" for split, count in summary["images"].items())
    print(f"wrote the synthetic world to {args.out} ({counts} images)")
    return 0


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser(
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
    synth.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)"
    )
    synth.add_argument("--seed", type=int, default=0, metavar="S")
    synth.add_argument(
        "--images", type=_positive, default=100, metavar="N", help="training images (val/test get N/10 each)"
    )
    synth.add_argument("--image-size", type=_positive, default=256, metavar="PX", help="image side in pixels")
    synth.set_defaults(handler=_synth)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a model on segmentation benchmarks (COCO, ADE20K, RefCOCO, ReasonSeg, GCG, ...)",
        description=(
            "Evaluate with the official protocol (teacher-forced answers except GCG; evaluation "
            "thresholds) and deterministic prompts (the first template of each list). Writes "
            "OUT/results.json (fractions) and OUT/results.md (percent). Multi-GPU: "
            "'accelerate launch -m xsam.cli eval ...' splits the images between processes."
        ),
        epilog=(
            "benchmarks (default files relative to --data-root, the official datas/ layout; "
            f"override with --path key=value):\n{_BENCHMARKS}"
        ),
        formatter_class=_LazyHelpFormatter,
    )
    evaluate.add_argument("--model", required=True, metavar="DIR", help="a save_pretrained directory")
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--benchmark",
        action="append",
        metavar="NAME",
        help="benchmark name or official data_name (repeatable, or comma-separated)",
    )
    which.add_argument(
        "--suite",
        choices=["synthetic", "synthetic_closed_set"],
        help="a group of benchmarks with flat summary keys: 'synthetic' = every task on the world of "
        "'xsam synth'; 'synthetic_closed_set' = a stage-1 model's closed-set segmentor (no LLM) on its "
        "panoptic, semantic and instance benchmarks",
    )
    evaluate.add_argument("--data-root", metavar="DIR", help="folder the benchmark paths are relative to")
    evaluate.add_argument(
        "--path", action="append", metavar="KEY=PATH", help="override one of the benchmark's file paths"
    )
    evaluate.add_argument("--limit", type=_positive, metavar="N", help="evaluate the first N samples only")
    evaluate.add_argument("--out", default="xsam-eval", metavar="DIR", help="output folder")
    evaluate.add_argument(
        "--save-predictions",
        action="store_true",
        help="also write OUT/<benchmark>/predictions (the formats 'xsam score' reads)",
    )
    evaluate.add_argument("--max-new-tokens", type=_positive, default=512, help="GCG generation budget")
    evaluate.add_argument("--device", help="torch device (default: this process's accelerator or cpu)")
    evaluate.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype")
    evaluate.set_defaults(handler=_eval)


def _add_score(commands: argparse._SubParsersAction) -> None:
    from .eval.score import SCORE_TASKS

    score = commands.add_parser(
        "score",
        help="score saved predictions against ground truth (no model needed)",
        description=(
            "Print the metrics of saved predictions as one JSON object (fractions in [0, 1]). Formats: "
            "panoptic = COCO panoptic JSON + PNG folder (gt and pred); semantic = label-PNG folders, "
            "255 ignore; instance/vgd = COCO instances JSON + COCO results; referring/reasoning/"
            "interactive = JSON lists of {id, segmentation RLE[, ignore RLE]}; gcg = GranD-f mask and "
            "caption GT JSONs + a list of {image_id, caption, masks}. See docs/evaluation.md."
        ),
    )
    score.add_argument("--task", required=True, choices=SCORE_TASKS)
    score.add_argument("--gt-json", metavar="PATH", help="ground-truth JSON (GCG: the mask GT)")
    score.add_argument("--gt-dir", metavar="DIR", help="ground-truth PNG folder (panoptic, semantic)")
    score.add_argument("--pred-json", metavar="PATH", help="prediction JSON")
    score.add_argument("--pred-dir", metavar="DIR", help="prediction PNG folder (panoptic, semantic)")
    score.add_argument("--caption-gt-json", metavar="PATH", help="GCG caption ground truth")
    score.add_argument("--num-classes", type=_positive, metavar="N", help="semantic: number of classes")
    score.set_defaults(handler=_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsam",
        description="X-SAM: one multimodal LLM for any segmentation task, in plain PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_describe(commands)
    _add_convert(commands)
    _add_predict(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_score(commands)
    _add_synth(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
