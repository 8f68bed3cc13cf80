"""Write the tiny GCG, VGD, COCO-Interactive and LLaVA fixtures of ``tests/test_format_gcg_vgd_llava.py``.

Every file mimics the public format it stands for (see the readers in ``xsam.data.formats``), over
24 x 32 images (height x width). Masks are axis-aligned rectangles so the tests can state the
expected pixels; RLEs are COCO compressed RLEs with text counts, as in the released json files.

Run ``python tests/data/formats/make_gcg_vgd_llava_fixtures.py [OUT_DIR]`` (default: next to this
script); the output is deterministic, and a test checks the checked-in json against it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 24, 32


def rect(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """A ``(HEIGHT, WIDTH)`` bool mask, True on rows ``[top, bottom)`` and columns ``[left, right)``."""
    array = np.zeros((HEIGHT, WIDTH), dtype=bool)
    array[top:bottom, left:right] = True
    return array


def rle(array: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def polygon(top: int, left: int, bottom: int, right: int) -> list[float]:
    """A rectangle polygon ``[x0, y0, x1, y0, x1, y1, x0, y1]`` around the given pixel rows/columns."""
    return [left, top, right, top, right, bottom, left, bottom]


def grandf() -> list:
    # caption (normalised): "a man holding a red cup." -> "a man" [0, 5), "a red cup" [14, 23)
    return [
        {
            "image_id": 1,
            "file_name": "grandf_1.jpg",
            "caption": '"A Man holding a red cup."',
            "groundings": {
                "a red cup": {"token_positives": [14, 23], "rle_masks": [rle(rect(10, 20, 14, 26))]},
                "A Man": {
                    "token_positives": [0, 5],
                    "rle_masks": [rle(rect(2, 2, 20, 8)), rle(rect(0, 2, 2, 8))],
                },
                "red cup": {"token_positives": [16, 23], "rle_masks": [rle(rect(10, 22, 14, 26))]},
                " holding": {"token_positives": [5, 13], "rle_masks": [rle(rect(5, 8, 9, 20))]},
                "a dog": {"token_positives": [0, 5], "rle_masks": [rle(rect(0, 0, 3, 3))]},
            },
        },
        {
            "image_id": 2,
            "file_name": "grandf_2.jpg",
            "caption": "A cat.",
            "groundings": {"a dog": {"token_positives": [0, 5], "rle_masks": [rle(rect(0, 0, 4, 4))]}},
        },
    ]


def refcocog_gcg() -> list:
    return [
        {
            "0": {
                "img_file_name": "refcocog_1.jpg",
                "caption": "The woman in red stands beside a white dog.",
                "refs": [
                    {"sentence": "a white dog", "segmentation": [polygon(12, 16, 22, 30)]},
                    {
                        "sentence": "The woman in red",
                        "segmentation": [polygon(1, 1, 10, 6), polygon(1, 8, 10, 12)],
                    },
                    {"sentence": "a horse", "segmentation": [polygon(0, 0, 5, 5)]},
                ],
            }
        },
        {
            "refcocog_2.jpg": {
                "image_id": 7,
                "height": HEIGHT,
                "width": WIDTH,
                "caption": "A cup and a cup.",
                "refs": [
                    {"sentence": "a cup", "segmentation": [polygon(2, 2, 6, 6)]},
                    {"sentence": "a cup", "segmentation": [polygon(2, 20, 6, 24)]},
                ],
            }
        },
    ]


def flickr_gcg() -> dict:
    # caption (normalised): "two dogs run on grass." -> "two dogs" [0, 8), "grass" [16, 21)
    images = [
        {
            "id": 2,
            "file_name": "flickr_2.jpg",
            "height": HEIGHT,
            "width": WIDTH,
            "caption": "Two dogs run on grass.",
        },
        {"id": 1, "file_name": "flickr_1.jpg", "height": HEIGHT, "width": WIDTH, "caption": "Dogs running"},
        {
            "id": 3,
            "file_name": "flickr_3.jpg",
            "height": HEIGHT,
            "width": WIDTH,
            "caption": "A boy with a kite.",
        },
    ]
    annotations = [
        {"id": 10, "image_id": 2, "tokens_positive": [[16, 21]], "sam_mask": rle(rect(18, 0, 24, 32))},
        {"id": 11, "image_id": 2, "tokens_positive": [[0, 8]], "sam_mask": rle(rect(6, 4, 16, 20))},
        {"id": 12, "image_id": 2, "tokens_positive": [[4, 8]], "sam_mask": rle(rect(6, 4, 16, 10))},
        {"id": 13, "image_id": 1, "tokens_positive": [[0, 4]], "sam_mask": rle(rect(0, 0, 5, 5))},
    ]
    for annotation in annotations:
        annotation.update(category_id=1, bbox=[0, 0, 1, 1], area=1, iscrowd=0)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def gcg_eval() -> tuple[dict, dict]:
    mask_gt = {
        "images": [
            {"id": "img_a", "file_name": "img_a.jpg", "height": HEIGHT, "width": WIDTH},
            {"id": "img_b"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": "img_a",
                "category_id": 1,
                "segmentation": rle(rect(4, 4, 12, 12)),
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": "img_a",
                "category_id": 1,
                "segmentation": rle(rect(14, 0, 24, 32)),
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": "img_b",
                "category_id": 1,
                "segmentation": rle(rect(0, 16, 8, 32)),
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    caption_gt = {
        "images": [{"id": "img_a"}, {"id": "img_b"}],
        "annotations": [
            {"id": 1, "image_id": "img_a", "caption": "A Cat sits on a mat.", "labels": ["A Cat", "a mat"]},
            {"id": 2, "image_id": "img_b", "caption": "A kite in the sky.", "labels": ["A kite"]},
        ],
    }
    return mask_gt, caption_gt


def coco_instances() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "vgd_1.jpg", "height": HEIGHT, "width": WIDTH},
            {"id": 2, "file_name": "vgd_2.jpg", "height": HEIGHT, "width": WIDTH},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [
            {
                "id": 101,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [polygon(4, 4, 16, 20)],
                "iscrowd": 0,
            },
            {
                "id": 102,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle(rect(0, 24, 24, 32)),
                "iscrowd": 1,
            },
            {
                "id": 103,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle(rect(18, 2, 23, 12)),
                "iscrowd": 0,
            },
        ],
    }


def coco_vgd() -> list:
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    return [
        {
            "image_file": "vgd_1.jpg",
            "image_id": 1,
            "image_size": [HEIGHT, WIDTH],
            "image_info": {"file_name": "vgd_1.jpg", "image_id": 1, "height": HEIGHT, "width": WIDTH},
            "annotations": [
                {
                    "id": 101,
                    "image_id": 1,
                    "category_id": 3,
                    "segmentation": [polygon(4, 4, 16, 20)],
                    "iscrowd": 0,
                    "bbox_mode": 1,
                    "visual_prompts": {
                        "point_visual_prompt": rle(rect(8, 10, 11, 13)),
                        "scribble_visual_prompt": rle(rect(6, 6, 8, 18)),
                        "box_visual_prompt": rle(rect(3, 4, 17, 21)),
                        "mask_visual_prompt": rle(rect(4, 4, 16, 20)),
                    },
                },
                {
                    "id": 103,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": rle(rect(18, 2, 23, 12)),
                    "iscrowd": 0,
                    "bbox_mode": 1,
                    "visual_prompts": {
                        "point_visual_prompt": rle(empty),
                        "scribble_visual_prompt": rle(empty),
                        "box_visual_prompt": rle(rect(18, 2, 23, 12)),
                        "mask_visual_prompt": rle(rect(17, 1, 24, 13)),
                    },
                },
            ],
        }
    ]


def coco_interactive() -> list:
    point = np.zeros((HEIGHT, WIDTH), dtype=bool)
    point[12, 16] = True
    scribble = np.zeros((HEIGHT, WIDTH), dtype=bool)
    scribble[10, 8:24] = True
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    return [
        {
            "image": "int_1.jpg",
            "image_info": {"file_name": "int_1.jpg", "height": HEIGHT, "width": WIDTH, "id": 5},
            "anns": [
                {
                    "id": 201,
                    "category_id": 3,
                    "bbox": [4, 4, 20, 16],
                    "iscrowd": 0,
                    "area": 192,
                    "segmentation": [polygon(4, 4, 20, 24)],
                    "point_visual_prompt_mask": rle(point),
                    "scribble_visual_prompt_mask": rle(scribble),
                    "box_visual_prompt_mask": rle(rect(4, 4, 20, 24)),
                    "mask_visual_prompt_mask": rle(rect(4, 4, 20, 24)),
                },
                {
                    "id": 202,
                    "category_id": 1,
                    "bbox": [0, 0, 2, 2],
                    "iscrowd": 0,
                    "area": 4,
                    "segmentation": rle(rect(0, 0, 2, 2)),
                    "point_visual_prompt_mask": rle(empty),
                    "scribble_visual_prompt_mask": rle(empty),
                    "box_visual_prompt_mask": rle(empty),
                    "mask_visual_prompt_mask": rle(empty),
                },
            ],
        },
        {
            "image_file": "int_2.jpg",
            "image_id": 6,
            "image_size": [HEIGHT, WIDTH],
            "image_info": {"file_name": "int_2.jpg", "image_id": 6, "height": HEIGHT, "width": WIDTH},
            "annotations": [
                {
                    "id": 301,
                    "image_id": 6,
                    "category_id": 1,
                    "segmentation": rle(rect(2, 2, 10, 10)),
                    "iscrowd": 0,
                    "visual_prompts": {"point_visual_prompt": rle(rect(4, 4, 7, 7))},
                }
            ],
        },
    ]


def llava() -> list:
    return [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."},
            ],
        },
        {
            "id": "text_only_1",
            "conversations": [
                {"from": "human", "value": "Name a primary colour."},
                {"from": "gpt", "value": "Red."},
            ],
        },
    ]


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def main(out_dir: Path) -> None:
    mask_gt, caption_gt = gcg_eval()
    write_json(out_dir / "gcg" / "grandf.json", grandf())
    write_json(out_dir / "gcg" / "refcocog_gcg.json", refcocog_gcg())
    write_json(out_dir / "gcg" / "flickr_gcg.json", flickr_gcg())
    write_json(out_dir / "gcg" / "val_gcg_coco_mask_gt.json", mask_gt)
    write_json(out_dir / "gcg" / "val_gcg_coco_caption_gt.json", caption_gt)
    write_json(out_dir / "vgd" / "instances.json", coco_instances())
    write_json(out_dir / "vgd" / "coco_vgd.json", coco_vgd())
    write_json(out_dir / "interactive" / "coco_interactive_val_psalm.json", coco_interactive())
    write_json(out_dir / "llava" / "llava.json", llava())
    # only the readers that fall back to the image header need image files
    for name in ("refcocog_1.jpg", "img_b.jpg"):
        (out_dir / "gcg" / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(out_dir / "gcg" / "images" / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
