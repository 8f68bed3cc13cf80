"""``xsam demo``: the web demo of every task (Gradio)."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from .common import add_face_arguments, listen, load_model, model_name

DEFAULT_PORT = 7860


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "demo",
        help="the web demo of every task, with drawn visual prompts",
        description=(
            "Serve the web demo: upload an image, pick a task (or let the prompt choose it), draw points, "
            "boxes, scribbles or masks, and get the overlay, the instances, the caption or the chat answer. "
            "Needs the demo extra: pip install 'xsam-torch[demo]'."
        ),
    )
    add_face_arguments(parser, DEFAULT_PORT)
    parser.add_argument(
        "--share", action="store_true", help="also publish a temporary public link through Gradio's relay"
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="keep every request (input image, overlay, a JSON line) here; by default nothing is kept",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # Gradio keeps uploads and outputs in its temporary folder: make it private to this process,
    # emptied as sessions expire and removed at exit (set before Gradio is imported)
    work_dir = Path(tempfile.mkdtemp(prefix="xsam-demo-"))
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from ..demo.app import build_demo
    except ImportError as error:
        raise ValueError(
            f"xsam demo needs the demo extra: pip install 'xsam-torch[demo]' ({error})"
        ) from None
    from ..demo import Demo
    from ..inference.predictor import XSamPredictor
    from ..processing import ImagePolicy

    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir is not None and log_dir.exists() and not log_dir.is_dir():
        raise ValueError(f"--log-dir {log_dir} is a file, not a folder")
    listen(args.host, args.port).close()  # a taken port fails now, not after loading the model
    model = load_model(args.model, args.dtype, args.device)
    predictor = XSamPredictor(model, image_policy=ImagePolicy(max_pixels=args.max_image_pixels))
    page = build_demo(Demo(predictor, model_name(args.model)), work_dir=work_dir, log_dir=log_dir)
    page.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, show_error=False
    )
    return 0
