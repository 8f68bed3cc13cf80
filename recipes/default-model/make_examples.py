"""Pick the bundled example images and their prompts from a synthetic world (deterministically).

    python recipes/default-model/make_examples.py runs/default-model/world

Writes ``src/xsam/assets/examples/``: one held-out test image that has a referring expression and a
reasoning query, prompted for every task, and one open-vocabulary image prompted with colour-shape
compositions; ``examples.json`` lists the requests (keyword arguments of ``XSamPredictor.predict``)
that ``xsam predict --examples`` runs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "src" / "xsam" / "assets" / "examples"


def _categories(panoptic: dict) -> str:
    """Every class of the world, in the generic prompt syntax."""
    things = [c["name"] for c in panoptic["categories"] if c["isthing"]]
    stuff = [c["name"] for c in panoptic["categories"] if not c["isthing"]]
    return f"ins: {', '.join(things)}; sem: {', '.join(stuff)}"


def _test_image(world: Path) -> tuple[dict, str, dict]:
    """The first test image with both a referring expression and a ReasonSeg query."""
    refs = pickle.loads((world / "refer" / "refs(unc).p").read_bytes())
    first_sentence = {}
    for ref in refs:
        if ref["split"] == "test":
            first_sentence.setdefault(ref["image_id"], ref["sentences"][0]["sent"])
    instances = json.loads((world / "instances" / "instances_test.json").read_text())
    for image in instances["images"]:
        query = world / "reasonseg" / "test" / f"{Path(image['file_name']).stem}.json"
        if image["id"] in first_sentence and query.is_file():
            return image, first_sentence[image["id"]], json.loads(query.read_text())
    raise SystemExit("no test image has both a referring expression and a reasoning query")


def _prompted_instance(world: Path, image_id: int) -> tuple[list[int], list[float]]:
    """A clicked point and a box of the image's first interactive instance."""
    entries = json.loads((world / "interactive" / "coco_interactive_test_psalm.json").read_text())
    entry = next(e for e in entries if e["image_info"]["id"] == image_id)
    annotation = entry["anns"][0]
    x, y, width, height = annotation["bbox"]
    from pycocotools import mask as mask_utils

    point = mask_utils.decode(annotation["point_visual_prompt_mask"]).nonzero()
    return [int(point[1][0]), int(point[0][0])], [x, y, x + width, y + height]


def make(world: Path) -> Path:
    image, expression, reasoning = _test_image(world)
    panoptic = json.loads((world / "panoptic" / "panoptic_test.json").read_text())
    point, box = _prompted_instance(world, image["id"])
    requests = [
        {"task": "generic", "categories": _categories(panoptic)},
        {"task": "referring", "text": expression},
        {"task": "reasoning", "text": reasoning["text"][0], "is_sentence": reasoning["is_sentence"]},
        {"task": "gcg", "max_new_tokens": 64},
        {"task": "interactive", "points": [point]},
        {"task": "vgd", "boxes": [box]},
        {"task": "chat", "text": "How many shapes are there?", "max_new_tokens": 32},
    ]
    ov_instances = json.loads((world / "open_vocab" / "instances_ov_test.json").read_text())
    ov_panoptic = json.loads((world / "open_vocab" / "panoptic_ov_test.json").read_text())
    ov_image = ov_instances["images"][0]
    names = {c["id"]: c["name"] for c in ov_instances["categories"]}
    annotations = [a for a in ov_instances["annotations"] if a["image_id"] == ov_image["id"]]
    held_out = json.loads((world / "world.json").read_text())["held_out"]
    things = sorted({names[a["category_id"]] for a in annotations} | set(held_out))
    stuff = [c["name"] for c in ov_panoptic["categories"] if not c["isthing"]]
    ov_categories = f"ins: {', '.join(things)}; sem: {', '.join(stuff)}"
    ov_requests = [{"task": "open_vocab", "categories": ov_categories}]

    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    listing = []
    for split, entry, entry_requests in (("test", image, requests), ("ov_test", ov_image, ov_requests)):
        shutil.copy(world / "images" / split / entry["file_name"], TARGET / entry["file_name"])
        listing.append({"image": entry["file_name"], "requests": entry_requests})
    (TARGET / "examples.json").write_text(json.dumps({"examples": listing}, indent=1) + "\n")
    return TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", type=Path, help="a folder written by xsam synth")
    print(make(parser.parse_args().world))


if __name__ == "__main__":
    main()
