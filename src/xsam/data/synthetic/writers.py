"""One writer per public format: each takes the world's images one at a time (:meth:`add`) and writes
its files under the world's root (per-image files at once, JSON indexes in :meth:`finish`).

The layouts are those the readers of :mod:`xsam.data.formats` read (see their docstrings); paths below
are relative to the world's root. Image ids are ints, file stems ``f"{id:06d}"``. Every JSON file is
written compactly with keys in a fixed order, so a world is reproducible byte for byte.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...processing import encode_rle
from ..formats.coco import id_to_rgb
from .geometry import mask_bbox, outline_polygons
from .language import GroundedCaption, conversation, grounded_caption, reasoning_query, referring_sentences
from .prompts import PROMPT_KINDS, VisualPrompts, draw_prompts
from .scene import COLOURS, SHAPES, STUFF, Scene

STUFF_ID_OFFSET = 101
"""Stuff class ``k`` (in :data:`~xsam.data.synthetic.scene.STUFF` order) has category id ``101 + k``."""
VGD_BBOX_MODE = 1  # detectron2's BoxMode.XYWH_ABS, what COCO-VGD writes

# independent random streams of one image, after the scene's own (so changing how captions are worded
# never moves a shape)
_REASONING_STREAM, _CONVERSATION_STREAM, _PROMPT_STREAM = 1, 2, 3


@dataclass(eq=False)
class WorldImage:
    """One image of the world and what every writer derives from it.

    Attributes:
        split: ``train``, ``val``, ``test`` or ``ov_test``.
        image_id: unique over all splits.
        scene: the rendered scene.
        annotation_ids: one per ``scene.things``, unique over all splits.
        seed: ``(world seed, split number, index)``; extra generators extend it with a stream number.
        jpeg: the encoded image.
    """

    split: str
    image_id: int
    scene: Scene
    annotation_ids: tuple[int, ...]
    seed: tuple[int, int, int]
    jpeg: bytes = field(repr=False)

    @property
    def stem(self) -> str:
        return f"{self.image_id:06d}"

    @property
    def file_name(self) -> str:
        return f"{self.stem}.jpg"

    @property
    def side(self) -> int:
        return self.scene.side

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, stream])

    @functools.cached_property
    def thing_rles(self) -> list[dict[str, Any]]:
        return [encode_rle(thing.mask) for thing in self.scene.things]

    @functools.cached_property
    def prompts(self) -> list[VisualPrompts]:
        """Visual prompts of every thing, shared by COCO-Interactive and COCO-VGD."""
        rng = self.rng(_PROMPT_STREAM)
        return [draw_prompts(rng, thing.mask) for thing in self.scene.things]

    def image_entry(self, file_name: str | None = None) -> dict[str, Any]:
        return {
            "id": self.image_id,
            "file_name": file_name or self.file_name,
            "height": self.side,
            "width": self.side,
        }

    def instance_annotation(self, index: int, category_id: int) -> dict[str, Any]:
        """COCO instance annotation of ``scene.things[index]``; ``attributes`` (colour, size) is an
        extra field the readers ignore."""
        thing = self.scene.things[index]
        return {
            "id": self.annotation_ids[index],
            "image_id": self.image_id,
            "category_id": category_id,
            "segmentation": self.thing_rles[index],
            "area": thing.area,
            "bbox": mask_bbox(thing.mask),
            "iscrowd": 0,
            "attributes": {"colour": thing.colour, "size": thing.size},
        }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


# --- categories ----------------------------------------------------------------------------------


def shape_category_id(shape: str) -> int:
    return SHAPES.index(shape) + 1


def composition_category_id(colour: str, shape: str) -> int:
    """Open-vocabulary ids: colours-major, ``1 … len(COLOURS)·len(SHAPES)``."""
    return list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape) + 1


def stuff_category_id(name: str) -> int:
    return STUFF_ID_OFFSET + STUFF.index(name)


def shape_categories() -> list[dict[str, Any]]:
    return [{"id": shape_category_id(s), "name": s, "supercategory": "shape", "isthing": 1} for s in SHAPES]


def composition_categories() -> list[dict[str, Any]]:
    return [
        {"id": composition_category_id(c, s), "name": f"{c} {s}", "supercategory": s, "isthing": 1}
        for c in COLOURS
        for s in SHAPES
    ]


def stuff_categories() -> list[dict[str, Any]]:
    return [{"id": stuff_category_id(n), "name": n, "supercategory": "stuff", "isthing": 0} for n in STUFF]


def semantic_classes() -> list[tuple[str, bool]]:
    """``(name, is_thing)`` in class-index order (the panoptic categories in id order)."""
    return [(shape, True) for shape in SHAPES] + [(name, False) for name in STUFF]


# --- COCO panoptic, instances and semantic -------------------------------------------------------


class CocoWriter:
    """COCO panoptic (JSON + PNGs), COCO instances and semantic label PNGs of one split.

    With ``open_vocabulary`` the thing categories are the colour-shape compositions and the files go
    to ``open_vocab/`` (no semantic PNGs); otherwise shapes, under ``panoptic/``, ``instances/`` and
    ``semantic/``. Panoptic segment ids are ``1000·category id + k`` (one segment per stuff class,
    ``k = 0``; instance ``k`` of the image for things), which exercises all three RGB channels.
    """

    def __init__(self, root: Path, split: str, *, open_vocabulary: bool = False) -> None:
        self.root, self.split, self.open_vocabulary = root, split, open_vocabulary
        folder = "open_vocab" if open_vocabulary else "panoptic"
        self.panoptic_json = root / folder / f"panoptic_{split}.json"
        self.png_dir = root / folder / f"panoptic_{split}"
        self.instances_json = (
            root / ("open_vocab" if open_vocabulary else "instances") / f"instances_{split}.json"
        )
        self.label_dir = None if open_vocabulary else root / "semantic" / split
        things = composition_categories() if open_vocabulary else shape_categories()
        self.categories = things + stuff_categories()
        self.thing_categories = [{key: c[key] for key in ("id", "name", "supercategory")} for c in things]
        self.images: list[dict[str, Any]] = []
        self.panoptic: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []

    def category_id(self, image: WorldImage, index: int) -> int:
        thing = image.scene.things[index]
        if self.open_vocabulary:
            return composition_category_id(thing.colour, thing.shape)
        return shape_category_id(thing.shape)

    def add(self, image: WorldImage) -> None:
        self.images.append(image.image_entry())
        ids = np.zeros((image.side, image.side), dtype=np.int64)
        segments = []
        for region in image.scene.stuff:
            segments.append(self._segment(ids, region.mask, stuff_category_id(region.name), 0))
        for index, thing in enumerate(image.scene.things):
            category_id = self.category_id(image, index)
            segments.append(self._segment(ids, thing.mask, category_id, index + 1))
            self.instances.append(image.instance_annotation(index, category_id))
        _write_png(self.png_dir / f"{image.stem}.png", id_to_rgb(ids))
        self.panoptic.append(
            {"image_id": image.image_id, "file_name": f"{image.stem}.png", "segments_info": segments}
        )
        if self.label_dir is not None:
            _write_png(self.label_dir / f"{image.stem}.png", _semantic_labels(image.scene))

    @staticmethod
    def _segment(ids: np.ndarray, mask: np.ndarray, category_id: int, number: int) -> dict[str, Any]:
        segment_id = 1000 * category_id + number
        ids[mask] = segment_id
        return {
            "id": segment_id,
            "category_id": category_id,
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": mask_bbox(mask),
        }

    def finish(self) -> None:
        write_json(
            self.panoptic_json,
            {"images": self.images, "annotations": self.panoptic, "categories": self.categories},
        )
        write_json(
            self.instances_json,
            {"images": self.images, "annotations": self.instances, "categories": self.thing_categories},
        )


def _semantic_labels(scene: Scene) -> np.ndarray:
    """``(H, W)`` ``uint8`` class indices (:func:`semantic_classes` order); the scene has no void."""
    index = {name: number for number, (name, _) in enumerate(semantic_classes())}
    labels = np.full((scene.side, scene.side), 255, dtype=np.uint8)
    for region in scene.stuff:
        labels[region.mask] = index[region.name]
    for thing in scene.things:
        labels[thing.mask] = index[thing.shape]
    return labels


def write_semantic_classes(path: Path) -> None:
    """``semantic/classes.txt``: one ``name:thing`` / ``name:stuff`` line per class, in index order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f"{name}:{'thing' if thing else 'stuff'}\n" for name, thing in semantic_classes())
    )


# --- REFER ---------------------------------------------------------------------------------------


class ReferWriter:
    """RefCOCO layout under ``refer/``: ``instances.json`` over the train / val / test images (file
    names ``<split>/<stem>.jpg`` below ``images/``) and ``refs(unc).p``, a protocol-2 pickle of plain
    dicts, one ref per thing that has a unique expression."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "refer"
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.refs: list[dict[str, Any]] = []
        self.sentence_count = 0

    def add(self, image: WorldImage) -> None:
        self.images.append(image.image_entry(f"{image.split}/{image.file_name}"))
        things = image.scene.things
        for index, thing in enumerate(things):
            category_id = shape_category_id(thing.shape)
            self.annotations.append(image.instance_annotation(index, category_id))
            sentences = referring_sentences(things, index, image.side)
            if sentences:
                self.refs.append(self._ref(image, index, category_id, sentences))

    def _ref(self, image: WorldImage, index: int, category_id: int, sentences: list[str]) -> dict[str, Any]:
        annotation_id = image.annotation_ids[index]
        sent_ids = list(range(self.sentence_count, self.sentence_count + len(sentences)))
        self.sentence_count += len(sentences)
        return {
            "ref_id": len(self.refs),
            "ann_id": annotation_id,
            "image_id": image.image_id,
            "split": image.split,
            "category_id": category_id,
            "file_name": f"{image.stem}_{annotation_id}.jpg",
            "sent_ids": sent_ids,
            "sentences": [
                {"sent_id": sent_id, "raw": text, "sent": text, "tokens": text.split()}
                for sent_id, text in zip(sent_ids, sentences, strict=True)
            ],
        }

    def finish(self) -> None:
        write_json(
            self.folder / "instances.json",
            {"images": self.images, "annotations": self.annotations, "categories": _plain_shape_categories()},
        )
        (self.folder / "refs(unc).p").write_bytes(pickle.dumps(self.refs, protocol=2))


def _plain_shape_categories() -> list[dict[str, Any]]:
    return [
        {"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]} for c in shape_categories()
    ]


# --- ReasonSeg -----------------------------------------------------------------------------------


class ReasonSegWriter:
    """LISA ReasonSeg: ``reasonseg/<split>/<stem>.jpg`` + ``<stem>.json`` (queries and target polygons)
    and, for the training images asked in long sentences, ``reasonseg/explanatory/train.json``."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "reasonseg"
        self.explanations: list[dict[str, str]] = []

    def add(self, image: WorldImage) -> None:
        query = reasoning_query(image.rng(_REASONING_STREAM), image.scene)
        if query.is_thing:
            target = np.zeros((image.side, image.side), dtype=bool)
            for thing in image.scene.things:
                if thing.shape == query.category:
                    target |= thing.mask
        else:
            target = next(r.mask for r in image.scene.stuff if r.name == query.category)
        shapes = [
            {"label": "target", "labeled": True, "points": points, "shape_type": "polygon"}
            for points in outline_polygons(target)
        ]
        split_dir = self.folder / image.split
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / image.file_name).write_bytes(image.jpeg)
        write_json(
            split_dir / f"{image.stem}.json",
            {"text": list(query.queries), "is_sentence": query.is_sentence, "shapes": shapes},
        )
        if image.split == "train" and query.is_sentence:
            self.explanations.append(
                {"image": image.file_name, "query": query.queries[0], "outputs": query.explanation}
            )

    def finish(self) -> None:
        write_json(self.folder / "explanatory" / "train.json", self.explanations)


# --- GCG -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Grounding:
    """One grounded phrase of a caption: its text and span, the RLE of each mask it names (one per
    shape instance, or the stuff region's) and their ``(H, W)`` union."""

    text: str
    start: int
    end: int
    rles: list[dict[str, Any]]
    union: np.ndarray = field(repr=False)


def _groundings(image: WorldImage, caption: GroundedCaption) -> list[_Grounding]:
    groundings = []
    for phrase in caption.phrases:
        if phrase.stuff is not None:
            union = next(region.mask for region in image.scene.stuff if region.name == phrase.stuff)
            rles = [encode_rle(union)]
        else:
            union = np.logical_or.reduce([image.scene.things[index].mask for index in phrase.things])
            rles = [image.thing_rles[index] for index in phrase.things]
        text = caption.text[phrase.start : phrase.end]
        groundings.append(_Grounding(text, phrase.start, phrase.end, rles, union))
    return groundings


class GcgWriter:
    """Grounded captions: GranD-f training entries (``gcg/gcg_train.json``) and the GranD-f val / test
    ground truth (``gcg/val_test/<split>_gcg_coco_{mask,caption}_gt.json``, string image ids = stems,
    one mask annotation per grounded phrase: the union of what it names)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "gcg"
        self.train: list[dict[str, Any]] = []
        self.mask_gt: dict[str, dict[str, list[Any]]] = {}
        self.caption_gt: dict[str, dict[str, list[Any]]] = {}

    def add(self, image: WorldImage) -> None:
        caption = grounded_caption(image.scene)
        groundings = _groundings(image, caption)
        if image.split == "train":
            self.train.append(_grandf_entry(image, caption.text, groundings))
        else:
            self._add_ground_truth(image, caption.text, groundings)

    def _add_ground_truth(self, image: WorldImage, caption: str, groundings: list[_Grounding]) -> None:
        mask_gt = self.mask_gt.setdefault(image.split, {"images": [], "annotations": []})
        caption_gt = self.caption_gt.setdefault(image.split, {"images": [], "annotations": []})
        entry = {"id": image.stem, "file_name": image.file_name, "height": image.side, "width": image.side}
        mask_gt["images"].append(entry)
        caption_gt["images"].append(dict(entry))
        for grounding in groundings:
            mask_gt["annotations"].append(
                {
                    "id": len(mask_gt["annotations"]) + 1,
                    "image_id": image.stem,
                    "category_id": 1,
                    "segmentation": encode_rle(grounding.union),
                    "area": int(grounding.union.sum()),
                    "bbox": mask_bbox(grounding.union),
                    "iscrowd": 0,
                    "phrase": grounding.text,
                }
            )
        caption_gt["annotations"].append(
            {
                "id": len(caption_gt["annotations"]) + 1,
                "image_id": image.stem,
                "caption": caption,
                "labels": [grounding.text for grounding in groundings],
            }
        )

    def finish(self) -> None:
        write_json(self.folder / "gcg_train.json", self.train)
        for split, mask_gt in self.mask_gt.items():
            write_json(
                self.folder / "val_test" / f"{split}_gcg_coco_mask_gt.json",
                {**mask_gt, "categories": [{"id": 1, "name": "object"}]},
            )
            write_json(self.folder / "val_test" / f"{split}_gcg_coco_caption_gt.json", self.caption_gt[split])


def _grandf_entry(image: WorldImage, caption: str, groundings: list[_Grounding]) -> dict[str, Any]:
    return {
        "image_id": image.image_id,
        "file_name": image.file_name,
        "height": image.side,
        "width": image.side,
        "caption": caption,
        "groundings": {
            grounding.text: {"token_positives": [grounding.start, grounding.end], "rle_masks": grounding.rles}
            for grounding in groundings
        },
    }


# --- COCO-Interactive and COCO-VGD ---------------------------------------------------------------


class VisualPromptWriter:
    """COCO-VGD (``vgd/vgd_<split>.json``, prompts dilated, every split but ``ov_test``) and
    COCO-Interactive in PSALM's layout (``interactive/coco_interactive_<split>_psalm.json``, point and
    scribble thin, ``val`` and ``test``). Both use the same prompts of each instance."""

    def __init__(self, root: Path, *, interactive_splits: Sequence[str] = ("val", "test")) -> None:
        self.root = root
        self.interactive_splits = tuple(interactive_splits)
        self.vgd: dict[str, list[dict[str, Any]]] = {}
        self.interactive: dict[str, list[dict[str, Any]]] = {}

    def add(self, image: WorldImage) -> None:
        base = [
            image.instance_annotation(index, shape_category_id(thing.shape))
            for index, thing in enumerate(image.scene.things)
        ]
        vgd = [
            {
                **annotation,
                "bbox_mode": VGD_BBOX_MODE,
                "visual_prompts": _rles(prompts.dilated(), "_visual_prompt"),
            }
            for annotation, prompts in zip(base, image.prompts, strict=True)
        ]
        info = {
            "file_name": image.file_name,
            "image_id": image.image_id,
            "height": image.side,
            "width": image.side,
        }
        self.vgd.setdefault(image.split, []).append(
            {
                "image_file": image.file_name,
                "image_id": image.image_id,
                "image_size": [image.side, image.side],
                "image_info": info,
                "annotations": vgd,
            }
        )
        if image.split in self.interactive_splits:
            anns = [
                {**annotation, **_rles(prompts.as_dict(), "_visual_prompt_mask")}
                for annotation, prompts in zip(base, image.prompts, strict=True)
            ]
            self.interactive.setdefault(image.split, []).append(
                {"image": image.file_name, "image_info": {**image.image_entry()}, "anns": anns}
            )

    def finish(self) -> None:
        for split, entries in self.vgd.items():
            write_json(self.root / "vgd" / f"vgd_{split}.json", entries)
        for split, entries in self.interactive.items():
            write_json(self.root / "interactive" / f"coco_interactive_{split}_psalm.json", entries)


def _rles(prompts: dict[str, np.ndarray], suffix: str) -> dict[str, dict[str, Any]]:
    return {f"{kind}{suffix}": encode_rle(prompts[kind]) for kind in PROMPT_KINDS}


# --- LLaVA ---------------------------------------------------------------------------------------


class LlavaWriter:
    """LLaVA conversations about the training images (``llava/llava_train.json``) and one-turn brief
    descriptions for the alignment stage (``llava/pretrain_train.json``)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "llava"
        self.conversations: list[dict[str, Any]] = []
        self.descriptions: list[dict[str, Any]] = []

    def add(self, image: WorldImage) -> None:
        turns = conversation(image.rng(_CONVERSATION_STREAM), image.scene, SHAPES)
        self.conversations.append({"id": image.stem, "image": image.file_name, "conversations": turns})
        describe = [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": grounded_caption(image.scene).text},
        ]
        self.descriptions.append({"id": image.stem, "image": image.file_name, "conversations": describe})

    def finish(self) -> None:
        write_json(self.folder / "llava_train.json", self.conversations)
        write_json(self.folder / "pretrain_train.json", self.descriptions)
