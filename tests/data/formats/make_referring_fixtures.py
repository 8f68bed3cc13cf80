"""Write the tiny REFER and ReasonSeg fixtures under ``tests/data/formats/{refer,reasonseg}/`` (run from
anywhere).

REFER (``refer/refcoco/`` with ``refs(unc).p``, ``refer/refcocog/`` with ``refs(umd).p``; both with the
same ``instances.json``): image 1 (24 x 32, H x W) and image 2 (20 x 28).

* annotation 102 (image 1, two polygons), 101 (image 1, one polygon), 103 (image 1, never referred) and
  201 (image 2, compressed RLE), listed in that order, so the reader's per-image order (annotation order)
  differs from the refs' order;
* ref 1 -> annotation 101, sentences "The red mug" / "the red mug" (a duplicate once lower-cased) /
  "mug on the left"; ref 2 -> 102, "two plates" / "both plates" / "the plates" (both train); ref 3 -> 201,
  "the spoon" / "silver spoon" (val in RefCOCO, test in RefCOCOg).

The pickles use protocol 2, as the released (Python 2) files do.

ReasonSeg (``reasonseg/val/`` + ``reasonseg/explanatory.json``):

* ``a.jpg`` (20 x 24), two long-sentence queries; in file order a small target square, a "flag" shape
  over the whole image, an ignore rectangle and a large target rectangle: painted largest first, the
  ignore rectangle cuts a hole into the large target and the small square stays target inside it
  (painted in file order, the large target would cover everything);
* ``b.jpg`` (16 x 20), one short query; a target triangle with fractional vertices, one outside the
  image, on which OpenCV < 4.11 and >= 4.11 differ in six pixels;
* ``explanatory.json`` explains ``a.jpg`` only.

The tests spell out the same regions independently, so they check this script as much as the readers.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parent
IMAGE_SIZES = {1: (24, 32), 2: (20, 28)}  # image id -> (H, W)


def box(size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    array = np.zeros(size, dtype=bool)
    array[rows[0] : rows[1], cols[0] : cols[1]] = True
    return array


def rectangle_polygon(size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> list[float]:
    """The COCO polygon pycocotools rasterises to exactly ``box(size, rows, cols)``."""
    (top, bottom), (left, right) = rows, cols
    polygon = [left, top, right, top, right, bottom, left, bottom]
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], *size)))
    assert np.array_equal(decoded.astype(bool), box(size, rows, cols)), "polygon rasterisation changed"
    return [float(value) for value in polygon]


def instances() -> dict:
    size1, size2 = IMAGE_SIZES[1], IMAGE_SIZES[2]
    spoon = mask_utils.encode(np.asfortranarray(box(size2, (5, 15), (6, 20)).astype(np.uint8)))
    annotations = [
        {
            "id": 102,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [
                rectangle_polygon(size1, (12, 20), (4, 10)),
                rectangle_polygon(size1, (14, 18), (20, 28)),
            ],
        },
        {
            "id": 101,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [rectangle_polygon(size1, (2, 10), (3, 12))],
        },
        {
            "id": 103,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [rectangle_polygon(size1, (0, 4), (26, 31))],
        },
        {
            "id": 201,
            "image_id": 2,
            "category_id": 3,
            "segmentation": {"size": list(size2), "counts": spoon["counts"].decode("ascii")},
        },
    ]
    for annotation in annotations:
        annotation.update(iscrowd=0, area=0.0, bbox=[0.0, 0.0, 1.0, 1.0])
    images = [
        {"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": h, "width": w}
        for image_id, (h, w) in IMAGE_SIZES.items()
    ]
    categories = [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}, {"id": 3, "name": "spoon"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def ref(ref_id: int, ann_id: int, image_id: int, category_id: int, split: str, sentences: list[str]) -> dict:
    sent_ids = [ref_id * 10 + index for index in range(len(sentences))]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "split": split,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "sent_ids": sent_ids,
        "sentences": [
            {"sent_id": sent_id, "raw": text, "sent": text, "tokens": text.lower().split()}
            for sent_id, text in zip(sent_ids, sentences, strict=True)
        ],
    }


def refs(third_split: str) -> list[dict]:
    return [
        ref(1, 101, 1, 1, "train", ["The red mug", "the red mug", "mug on the left"]),
        ref(2, 102, 1, 2, "train", ["two plates", "both plates", "the plates"]),
        ref(3, 201, 2, 3, third_split, ["the spoon", "silver spoon"]),
    ]


def write_refer() -> None:
    for dataset, split_by, third_split in (("refcoco", "unc", "val"), ("refcocog", "umd", "test")):
        folder = ROOT / "refer" / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(instances()))
        (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs(third_split), protocol=2))


def square(left: int, top: int, right: int, bottom: int) -> list[list[float]]:
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def write_image(path: Path, height: int, width: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=60)


def write_reasonseg() -> None:
    split = ROOT / "reasonseg" / "val"
    split.mkdir(parents=True, exist_ok=True)
    write_image(split / "a.jpg", 20, 24, seed=1)
    write_image(split / "b.jpg", 16, 20, seed=2)
    a = {
        "text": ["What would you pour hot coffee into?", "Which object keeps a drink warm?"],
        "is_sentence": True,
        "shapes": [
            {"label": "target", "points": square(10, 7, 13, 10), "shape_type": "polygon"},
            {"label": "flag", "points": square(0, 0, 23, 19), "shape_type": "polygon"},
            {"label": "ignore", "points": square(8, 5, 16, 12), "shape_type": "polygon"},
            {"label": "target", "points": square(2, 2, 20, 16), "shape_type": "polygon"},
        ],
    }
    b = {
        "text": ["the lid"],
        "is_sentence": False,
        "shapes": [
            {"label": "target", "points": [[25.8, 5.4], [5.5, 13.4], [20.1, 0.6]], "shape_type": "polygon"}
        ],
    }
    (split / "a.json").write_text(json.dumps(a, indent=1))
    (split / "b.json").write_text(json.dumps(b, indent=1))
    explanatory = [
        {
            "image": "a.jpg",
            "query": "What would you pour hot coffee into?",
            "outputs": "A mug is made to hold hot drinks.",
        }
    ]
    (ROOT / "reasonseg" / "explanatory.json").write_text(json.dumps(explanatory, indent=1))


if __name__ == "__main__":
    write_refer()
    write_reasonseg()
