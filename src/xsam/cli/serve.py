"""``xsam serve``: the HTTP service (native API, X-AnyLabeling and Label Studio protocols)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_face_arguments, listen, load_model, model_name, positive, positive_float

DEFAULT_PORT = 8000


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "serve",
        help="serve the model over HTTP (native API, X-AnyLabeling, Label Studio)",
        description=(
            "Serve one model over HTTP: the native API under /v1 (OpenAPI at /openapi.json, docs at "
            "/docs), X-AnyLabeling's remote-server protocol under /x-anylabeling and Label Studio's ML "
            "backend under /label-studio. Needs the serve extra: pip install 'xsam-torch[serve]'."
        ),
    )
    add_face_arguments(parser, DEFAULT_PORT)
    parser.add_argument(
        "--api-key", metavar="KEY", help="require this key on every route but the health checks and the docs"
    )
    parser.add_argument(
        "--max-body-bytes", type=positive, default=32 * 1024 * 1024, metavar="N", help="refuse larger bodies"
    )
    parser.add_argument(
        "--cache-bytes",
        type=positive,
        default=2 * 1024**3,
        metavar="N",
        help="bytes of image encodings kept (LRU)",
    )
    parser.add_argument(
        "--queue", type=positive, default=8, metavar="N", help="requests that may wait for the model"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=120.0, metavar="S", help="seconds before a request gets 504"
    )
    parser.add_argument(
        "--files-root", metavar="DIR", help="folder Label Studio tasks may name local images in"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import ServeSettings, XSamService, create_app
    except ImportError as error:
        raise ValueError(
            f"xsam serve needs the serve extra: pip install 'xsam-torch[serve]' ({error})"
        ) from None
    from ..inference.predictor import XSamPredictor

    files_root = Path(args.files_root) if args.files_root else None
    if files_root is not None and not files_root.is_dir():
        raise ValueError(f"--files-root {files_root}: no such folder")
    settings = ServeSettings(
        api_key=args.api_key,
        max_image_pixels=args.max_image_pixels,
        max_body_bytes=args.max_body_bytes,
        cache_bytes=args.cache_bytes,
        queue_size=args.queue,
        timeout=args.timeout,
        files_root=files_root,
    )
    listener = listen(args.host, args.port)  # before loading: a taken port fails at once
    predictor = XSamPredictor(load_model(args.model, args.dtype, args.device))
    model_id = model_name(args.model)
    app = create_app(XSamService(predictor, settings, model_id))
    print(f"xsam serve: {model_id} on http://{args.host}:{args.port} (docs: /docs)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listener])
    return 0
