"""Generate the synthetic world: every split's scenes, written in every format at once.

Image ids run over train, then val, test and ov_test; each image's scene comes from its own generator
seeded by ``(seed, split number, index)``, so a world is a pure function of its arguments and two runs
give byte-identical files.
"""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .scene import COLOURS, HELD_OUT, SHAPES, SIZES, STUFF, sample_scene
from .writers import (
    CocoWriter,
    GcgWriter,
    LlavaWriter,
    ReasonSegWriter,
    ReferWriter,
    VisualPromptWriter,
    WorldImage,
    write_json,
    write_semantic_classes,
)

SPLITS = ("train", "val", "test", "ov_test")
LABELLED_SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95
MIN_IMAGE_SIZE = 64
VERSION = 1


def split_sizes(images: int) -> dict[str, int]:
    """Images per split: ``images`` for train, ``max(2, images // 10)`` for each other split."""
    held = max(2, images // 10)
    return {"train": images, "val": held, "test": held, "ov_test": held}


def generate_world(
    out: str | Path, *, seed: int = 0, images: int = 100, image_size: int = 256, progress: bool = False
) -> dict[str, Any]:
    """Write the synthetic world under ``out``; returns the summary also written to ``out/world.json``.

    Files are written into a hidden sibling folder that is renamed to ``out`` at the end, so an error
    or interruption leaves no half-written world (and no sibling folder) behind.

    Args:
        out: the world's folder; must not exist, or be an empty folder.
        seed: the world's seed.
        images: training images (val, test and ov_test get ``max(2, images // 10)`` each).
        image_size: the side of every (square) image in pixels, at least 64.
        progress: show a progress bar.

    Raises:
        FileExistsError: ``out`` is a file or a non-empty folder.
        ValueError: ``images`` < 1 or ``image_size`` < 64.
    """
    out = Path(out)
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    _check_empty(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir()
    try:
        summary = _write_world(staging, seed=seed, images=images, image_size=image_size, progress=progress)
        _check_empty(out)  # someone may have written there meanwhile
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _check_empty(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the synthetic world")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")


def _write_world(root: Path, *, seed: int, images: int, image_size: int, progress: bool) -> dict[str, Any]:
    sizes = split_sizes(images)
    coco = {split: CocoWriter(root, split, open_vocabulary=split == "ov_test") for split in SPLITS}
    refer, reasonseg, gcg = ReferWriter(root), ReasonSegWriter(root), GcgWriter(root)
    prompts, llava = VisualPromptWriter(root), LlavaWriter(root)
    image_id, annotation_id = 1, 1
    with tqdm(total=sum(sizes.values()), desc="synthetic world", unit="image", disable=not progress) as bar:
        for split_number, split in enumerate(SPLITS):
            for index in range(sizes[split]):
                image = _world_image(seed, split, split_number, index, image_id, annotation_id, image_size)
                image_id, annotation_id = image_id + 1, annotation_id + len(image.scene.things)
                (root / "images" / split).mkdir(parents=True, exist_ok=True)
                (root / "images" / split / image.file_name).write_bytes(image.jpeg)
                coco[split].add(image)
                if split in LABELLED_SPLITS:
                    for writer in (refer, reasonseg, gcg, prompts):
                        writer.add(image)
                if split == "train":
                    llava.add(image)
                bar.update(1)
    for writer in (*coco.values(), refer, reasonseg, gcg, prompts, llava):
        writer.finish()
    write_semantic_classes(root / "semantic" / "classes.txt")
    summary = _summary(seed, sizes, image_size, refs=len(refer.refs))
    write_json(root / "world.json", summary)
    return summary


def _world_image(
    seed: int, split: str, split_number: int, index: int, image_id: int, annotation_id: int, image_size: int
) -> WorldImage:
    rng = np.random.default_rng([seed, split_number, index])
    scene = sample_scene(rng, image_size, open_vocabulary=split == "ov_test")
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    annotation_ids = tuple(range(annotation_id, annotation_id + len(scene.things)))
    return WorldImage(split, image_id, scene, annotation_ids, (seed, split_number, index), buffer.getvalue())


# --- summary -------------------------------------------------------------------------------------


def layout() -> dict[str, Any]:
    """Where each format lives, relative to the world's root, keyed like the ``FORMAT:key=value``
    specs of :mod:`xsam.data.sources` (and the benchmark path keys of :mod:`xsam.eval.benchmarks`)."""
    images = {split: f"images/{split}" for split in SPLITS}
    labelled = LABELLED_SPLITS
    return {
        "images": images,
        "coco_panoptic": {
            s: {
                "annotations": f"panoptic/panoptic_{s}.json",
                "png_dir": f"panoptic/panoptic_{s}",
                "image_dir": images[s],
            }
            for s in labelled
        },
        "coco_instances": {
            s: {"annotations": f"instances/instances_{s}.json", "image_dir": images[s]} for s in labelled
        },
        "semantic": {
            s: {"image_dir": images[s], "label_dir": f"semantic/{s}", "classes": "semantic/classes.txt"}
            for s in labelled
        },
        "open_vocab_panoptic": {
            "ov_test": {
                "annotations": "open_vocab/panoptic_ov_test.json",
                "png_dir": "open_vocab/panoptic_ov_test",
                "image_dir": images["ov_test"],
            }
        },
        "open_vocab_instances": {
            "ov_test": {"annotations": "open_vocab/instances_ov_test.json", "image_dir": images["ov_test"]}
        },
        "refer": {
            s: {"dataset_dir": "refer", "image_dir": "images", "dataset": "refcoco", "split": s}
            for s in labelled
        },
        "reasonseg": {
            s: {
                "split_dir": f"reasonseg/{s}",
                **({"explanatory": "reasonseg/explanatory/train.json"} if s == "train" else {}),
            }
            for s in labelled
        },
        "grandf": {"train": {"json": "gcg/gcg_train.json", "image_dir": images["train"]}},
        "gcg_eval": {
            s: {
                "mask_gt": f"gcg/val_test/{s}_gcg_coco_mask_gt.json",
                "caption_gt": f"gcg/val_test/{s}_gcg_coco_caption_gt.json",
                "image_dir": images[s],
            }
            for s in ("val", "test")
        },
        "coco_interactive": {
            s: {
                "json": f"interactive/coco_interactive_{s}_psalm.json",
                "image_dir": images[s],
                "instances": f"instances/instances_{s}.json",
            }
            for s in ("val", "test")
        },
        "coco_vgd": {
            s: {
                "vgd_json": f"vgd/vgd_{s}.json",
                "instances": f"instances/instances_{s}.json",
                "image_dir": images[s],
            }
            for s in labelled
        },
        "llava": {"train": {"json": "llava/llava_train.json", "image_dir": images["train"]}},
        "llava_pretrain": {"train": {"json": "llava/pretrain_train.json", "image_dir": images["train"]}},
    }


def training_sources() -> dict[str, list[str]]:
    """``xsam train --data`` specs over the train split (paths relative to the world: pass it as
    ``--data-root``): ``pretrain`` for the alignment stage, ``finetune`` for the segmentation stages."""
    where = layout()

    def spec(format_name: str, key: str, name: str, **extra: str) -> str:
        options = {**where[key]["train"], **extra}
        return f"{format_name}:" + ",".join(f"{k}={v}" for k, v in options.items()) + f",name={name}"

    return {
        "pretrain": [spec("llava", "llava_pretrain", "synthetic_pretrain")],
        "finetune": [
            spec("coco_panoptic", "coco_panoptic", "synthetic_panoptic"),
            spec("refer", "refer", "synthetic_refer"),
            spec("reasonseg", "reasonseg", "synthetic_reasonseg"),
            spec("grandf", "grandf", "synthetic_gcg"),
            spec("coco_vgd", "coco_vgd", "synthetic_vgd"),
            spec("llava", "llava", "synthetic_llava"),
        ],
    }


def _summary(seed: int, sizes: dict[str, int], image_size: int, *, refs: int) -> dict[str, Any]:
    return {
        "version": VERSION,
        "seed": seed,
        "images": dict(sizes),
        "image_size": image_size,
        "things": list(SHAPES),
        "stuff": list(STUFF),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "held_out": [f"{colour} {shape}" for colour, shape in HELD_OUT],
        "refs": refs,
        "layout": layout(),
        "training_sources": training_sources(),
    }
