"""``xsam train``: one X-SAM stage on a mixture of datasets, with HF Accelerate."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PRESETS
from .common import DATA_FORMATS, LazyHelpFormatter, integer_in, key_values, positive, positive_float

STAGES = ("seg_finetune", "align_pretrain", "mixed_finetune")
MAX_SEED = 2**32 - 1  # NumPy's global seed (set by accelerate's set_seed) takes 32 bits


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


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
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
            f"{DATA_FORMATS}\n\n"
            "examples:\n"
            "  xsam train --stage seg_finetune --preset official --output runs/s1 \\\n"
            "      --data coco_panoptic:root=coco,annotations=panoptic_train2017.json,"
            "png_dir=panoptic_train2017,image_dir=train2017\n"
            "  accelerate launch --config_file configs/accelerate/ddp.yaml -m xsam.cli train \\\n"
            "      --stage mixed_finetune --init runs/s2/final --output runs/s3 --data ... --data ..."
        ),
        formatter_class=LazyHelpFormatter,
    )
    _add_inputs(parser)
    _add_loop_options(parser)
    _add_run_folder_options(parser)
    _add_preset_overrides(parser)
    return parser


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """The stage, the data, the model to start from and the run folder."""
    parser.add_argument(
        "--stage", required=True, choices=STAGES, help="the stage preset (modules, rates, losses)"
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SPEC",
        help="a data source FORMAT:key=value,... (repeatable; see the formats below)",
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="run folder (log, checkpoints, final/)"
    )
    parser.add_argument(
        "--init",
        metavar="DIR",
        help="save_pretrained / xsam convert directory to start from (missing modules stay random)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="official",
        help="config of a random model when --init is not given",
    )
    parser.add_argument("--data-root", metavar="DIR", help="folder that relative spec paths are joined to")
    parser.add_argument(
        "--skip-bad-samples",
        action="store_true",
        help="replace a sample that cannot be built (unreadable image, malformed record) by the next good "
        "one of its source instead of stopping; each is logged, and the count per source is reported in "
        "log.jsonl and at the end",
    )


def _add_loop_options(parser: argparse.ArgumentParser) -> None:
    """Length, batching, precision, logging and seed of the loop."""
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=positive, metavar="N", help="optimisation steps")
    length.add_argument(
        "--epochs", type=positive_float, metavar="E", help="passes over the mixture (default: 1)"
    )
    parser.add_argument(
        "--batch-size", type=positive, default=4, metavar="N", help="samples per device per micro-batch"
    )
    parser.add_argument("--grad-accum", type=positive, default=1, metavar="N", help="micro-batches per step")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the LLM's activations in backward"
    )
    parser.add_argument(
        "--log-every", type=positive, default=10, metavar="N", help="console logging period in steps"
    )
    parser.add_argument(
        "--seed",
        type=integer_in(0, MAX_SEED),
        default=0,
        metavar="S",
        help="model init, data order and sampling (0..2^32-1)",
    )
    parser.add_argument(
        "--num-workers", type=integer_in(0), default=0, metavar="N", help="data-loader worker processes"
    )
    parser.add_argument(
        "--log-with", metavar="TRACKER", help="an Accelerate tracker (tensorboard, wandb, ...)"
    )


def _add_run_folder_options(parser: argparse.ArgumentParser) -> None:
    """What happens to --output: a new run, a resumed one, or a replaced one; and its checkpoints."""
    group = parser.add_argument_group("run folder and checkpoints (a non-empty --output needs one of these)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its latest checkpoint, exactly as if it had not stopped "
        "(log.jsonl is cut back to the checkpoint); a missing or empty --output starts a new run, a "
        "non-empty one without a checkpoint is an error",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a non-empty --output after removing the previous run's checkpoints/, "
        "final/ and log.jsonl (other files stay)",
    )
    group.add_argument(
        "--save-every", type=positive, metavar="N", help="checkpoint period in steps (default: end only)"
    )
    group.add_argument(
        "--keep-last",
        type=positive,
        metavar="N",
        help="keep only the N newest checkpoints (default: all; each holds the optimizer state, "
        "about 3x the model's size)",
    )


def _add_preset_overrides(parser: argparse.ArgumentParser) -> None:
    """Options that change the stage preset's recipe (a model trained from scratch needs them)."""
    group = parser.add_argument_group("overrides of the stage preset")
    group.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help="base learning rate (default: the preset's, the release's)",
    )
    group.add_argument(
        "--decay",
        choices=["step", "cosine"],
        help="learning-rate decay after warmup (default: the stage preset's; step decay suits long runs)",
    )
    group.add_argument(
        "--grad-clip",
        type=positive_float,
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
        type=positive,
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
        type=positive,
        metavar="N",
        help="point samples per mask of the segmentation loss (default: 12544, the release)",
    )
    group.add_argument(
        "--class-weight",
        type=positive_float,
        metavar="W",
        help="weight of the classification loss and matching cost (default: 2.0, the release)",
    )


def _stage(args: argparse.Namespace):
    from ..train.stages import stage_preset

    overrides = {
        "lr": args.lr,
        "decay": args.decay,
        "grad_clip": args.grad_clip,
        "scale_jitter": args.scale_jitter,
    }
    if args.lr_multiplier:
        overrides["lr_multipliers"] = key_values(args.lr_multiplier, "--lr-multiplier", float)
    return stage_preset(args.stage, **{key: value for key, value in overrides.items() if value is not None})


def _preset_values(args: argparse.Namespace) -> dict:
    """The loss options given on the command line (the others keep TrainArguments' defaults)."""
    given = (
        ("num_points", args.num_points),
        ("class_weight", args.class_weight),
        ("num_closed_set_classes", args.num_closed_set_classes),
    )
    return {name: value for name, value in given if value is not None}


def run(args: argparse.Namespace) -> int:
    from ..data.samples import SampleOptions
    from ..data.sources import build_mixture, parse_dataset_spec
    from ..train.loop import TrainArguments, initial_config_and_tokenizer, train
    from ..train.run_folder import plan_run_folder

    stage = _stage(args)
    specs = [parse_dataset_spec(text) for text in args.data]
    plan_run_folder(args.output, resume=args.resume, overwrite=args.overwrite)  # before reading any data
    config, tokenizer = initial_config_and_tokenizer(args.init, args.preset)
    dataset, _ = build_mixture(
        specs,
        config,
        tokenizer,
        data_root=Path(args.data_root) if args.data_root else None,
        train=True,
        seed=args.seed,
        options=SampleOptions(scale_range=stage.scale_jitter, closed_set=stage.closed_set),
        pad_to_square=stage.image_pad_to_square,
        skip_bad_samples=args.skip_bad_samples,
    )
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
        overwrite=args.overwrite,
        keep_last=args.keep_last,
        skip_bad_samples=args.skip_bad_samples,
        num_workers=args.num_workers,
        log_with=args.log_with,
        **_preset_values(args),
    )
    print(f"wrote {train(arguments)}")
    return 0
