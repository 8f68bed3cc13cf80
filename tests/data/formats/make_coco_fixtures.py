"""Write the tiny COCO-format fixtures under ``tests/data/formats/coco/`` (run from anywhere).

Layout (every image is 24 x 32, H x W):

* ``images/00000000000{1,2,3}.jpg``: deterministic pseudo-random JPEGs.
* ``panoptic.json`` + ``panoptic/00000000000{1,2}.png``: COCO panoptic for images 1 and 2 with sky and
  tree (stuff; tree twice in image 2, as two segments), persons and cars (things) and one crowd person.
  Segment ids use all three RGB channels so a swapped channel order would show.
* ``instances.json``: COCO instances over images 1-3 with a polygon, a compressed RLE, an uncompressed
  RLE crowd, a degenerate polygon (dropped by readers), a two-polygon annotation; image 3 has none.
* ``semantic/00000000000{1,2}.png``: single-channel class-index PNGs (255 = ignore) for images 1 and 2.

The tests spell out the same rectangles independently, so they check this script as much as the readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 24, 32
ROOT = Path(__file__).resolve().parent / "coco"


def box(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    array = np.zeros((HEIGHT, WIDTH), dtype=bool)
    array[rows[0] : rows[1], cols[0] : cols[1]] = True
    return array


def rectangle_polygon(rows: tuple[int, int], cols: tuple[int, int]) -> list[float]:
    """The polygon pycocotools rasterises to exactly ``box(rows, cols)``."""
    (top, bottom), (left, right) = rows, cols
    polygon = [left, top, right, top, right, bottom, left, bottom]
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], HEIGHT, WIDTH)))
    assert np.array_equal(decoded.astype(bool), box(rows, cols)), "polygon rasterisation changed"
    return [float(value) for value in polygon]


def compressed_rle(array: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(array: np.ndarray) -> dict:
    """Column-major run lengths starting with a (possibly empty) run of zeros."""
    counts, value, run = [], False, 0
    for pixel in array.flatten(order="F"):
        if bool(pixel) == value:
            run += 1
        else:
            counts.append(run)
            value, run = bool(pixel), 1
    counts.append(run)
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def bbox(array: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(array)
    return [
        int(cols.min()),
        int(rows.min()),
        int(cols.max() - cols.min() + 1),
        int(rows.max() - rows.min() + 1),
    ]


def write_images() -> list[dict]:
    (ROOT / "images").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    entries = []
    for image_id in (1, 2, 3):
        name = f"{image_id:012d}.jpg"
        pixels = generator.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(ROOT / "images" / name, quality=50)
        entries.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
    return entries


PANOPTIC_CATEGORIES = [  # deliberately not in id order
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky"},
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
    {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
]

# image id -> [(segment id, category id, iscrowd, mask)]; later segments overwrite earlier ones
PANOPTIC_SEGMENTS = {
    1: [
        (5_000_000, 187, 0, box((0, 8), (0, 32))),
        (1_234_567, 184, 0, box((16, 24), (0, 16))),
        (70_000, 1, 0, box((8, 20), (18, 24))),
        (200, 1, 1, box((10, 16), (26, 32))),
    ],
    2: [
        (77, 187, 0, box((0, 6), (0, 32))),
        (197_121, 3, 0, box((12, 18), (4, 14))),
        (88, 3, 0, box((14, 20), (20, 28))),
        (65_536, 184, 0, box((20, 24), (0, 6))),
        (65_537, 184, 0, box((20, 24), (26, 32))),
    ],
}


def write_panoptic(images: list[dict]) -> None:
    (ROOT / "panoptic").mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, segments in PANOPTIC_SEGMENTS.items():
        ids = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
        for segment_id, _, _, mask in segments:
            ids[mask] = segment_id
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        png_name = f"{image_id:012d}.png"
        Image.fromarray(rgb).save(ROOT / "panoptic" / png_name)
        info = [
            {
                "id": segment_id,
                "category_id": category_id,
                "iscrowd": iscrowd,
                "area": int((ids == segment_id).sum()),
                "bbox": bbox(ids == segment_id),
            }
            for segment_id, category_id, iscrowd, _ in segments
        ]
        annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": info})
    data = {"images": images[:2], "annotations": annotations, "categories": PANOPTIC_CATEGORIES}
    (ROOT / "panoptic.json").write_text(json.dumps(data, indent=1) + "\n")


def write_instances(images: list[dict]) -> None:
    car_l_shape = box((2, 6), (3, 9)) | box((2, 4), (9, 12))
    crowd = box((10, 16), (26, 32))
    annotations = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [rectangle_polygon((8, 20), (18, 24))],
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": compressed_rle(car_l_shape),
        },
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": uncompressed_rle(crowd)},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [[1.0, 1.0, 2.0, 2.0]]},
        {
            "id": 14,
            "image_id": 2,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [rectangle_polygon((2, 5), (2, 6)), rectangle_polygon((10, 14), (20, 30))],
        },
    ]
    categories = [
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 1, "name": "person", "supercategory": "person"},
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (ROOT / "instances.json").write_text(json.dumps(data, indent=1) + "\n")


def write_semantic() -> None:
    """Classes 0 person, 1 car, 2 tree, 3 sky; 255 ignore."""
    (ROOT / "semantic").mkdir(parents=True, exist_ok=True)
    first = np.full((HEIGHT, WIDTH), 255, dtype=np.uint8)
    first[box((0, 8), (0, 32))] = 3
    first[box((16, 24), (0, 16))] = 2
    first[box((8, 20), (18, 24))] = 0
    second = np.full((HEIGHT, WIDTH), 2, dtype=np.uint8)
    second[box((0, 6), (0, 32))] = 3
    second[box((12, 18), (4, 14))] = 1
    for image_id, labels in ((1, first), (2, second)):
        Image.fromarray(labels).save(ROOT / "semantic" / f"{image_id:012d}.png")


def main() -> None:
    images = write_images()
    write_panoptic(images)
    write_instances(images)
    write_semantic()
    for path in sorted(ROOT.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:6d}  {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
