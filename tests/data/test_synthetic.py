"""The synthetic world: every file it writes is read by our readers, the formats agree with each other,
held-out compositions stay held out, and generation is reproducible and all-or-nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from xsam.data.formats.coco import read_coco_instances, read_coco_panoptic, read_semantic_pngs, rgb_to_id
from xsam.data.formats.gcg import read_gcg_eval, read_grandf
from xsam.data.formats.llava import read_llava
from xsam.data.formats.reasonseg import TARGET_VALUE, read_reasonseg, reasonseg_label_map
from xsam.data.formats.refer import load_refs_pickle, read_refer
from xsam.data.formats.visual_prompts import dilate_disk, read_coco_interactive, read_coco_vgd
from xsam.data.sources import load_records, parse_dataset_spec
from xsam.data.synthetic import generate_world
from xsam.data.synthetic.geometry import erode_disk, has_holes, outline_polygons
from xsam.data.synthetic.language import STUFF_FACTS, THING_FACTS, referring_sentences
from xsam.data.synthetic.scene import HELD_OUT, SHAPES, STUFF, Thing

SEED, IMAGES, SIDE = 3, 12, 128
SPLITS = ("train", "val", "test")
HELD_OUT_NAMES = {f"{colour} {shape}" for colour, shape in HELD_OUT}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "world"
    generate_world(root, seed=SEED, images=IMAGES, image_size=SIDE)
    return root


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def split_size(split: str) -> int:
    return IMAGES if split == "train" else max(2, IMAGES // 10)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- every file is read by our readers -----------------------------------------------------------


def test_world_json_lists_every_path(world: Path) -> None:
    summary = load(world / "world.json")
    assert summary["version"] == 1 and summary["seed"] == SEED and summary["image_size"] == SIDE
    assert summary["images"] == {split: split_size(split) for split in (*SPLITS, "ov_test")}
    assert set(summary["held_out"]) == HELD_OUT_NAMES
    paths = [summary["layout"]["images"][split] for split in (*SPLITS, "ov_test")]
    for name, entries in summary["layout"].items():
        if name != "images":
            paths += [
                v for options in entries.values() for k, v in options.items() if k not in ("dataset", "split")
            ]
    missing = [path for path in paths if not (world / path).exists()]
    assert not missing


@pytest.mark.parametrize("split", SPLITS)
def test_coco_readers(world: Path, split: str) -> None:
    images = world / "images" / split
    panoptic = read_coco_panoptic(
        world / f"panoptic/panoptic_{split}.json", world / f"panoptic/panoptic_{split}", images
    )
    instances = read_coco_instances(world / f"instances/instances_{split}.json", images)
    spec = f"semantic:image_dir=images/{split},label_dir=semantic/{split},classes=semantic/classes.txt"
    semantic = load_records(parse_dataset_spec(spec), data_root=world)
    classes = [tuple(line.split(":")) for line in (world / "semantic/classes.txt").read_text().splitlines()]
    direct = read_semantic_pngs(images, world / "semantic" / split, [(n, k == "thing") for n, k in classes])
    assert [r.image_path for r in direct] == [r.image_path for r in semantic]
    assert len(panoptic) == len(instances) == len(semantic) == split_size(split)
    assert [name for name, _ in panoptic[0].categories] == [*SHAPES, *STUFF]
    assert semantic[0].categories == [(shape, True) for shape in SHAPES] + [(name, False) for name in STUFF]
    assert all(record.segments for record in instances)


def test_open_vocabulary_split(world: Path) -> None:
    images = world / "images" / "ov_test"
    panoptic = read_coco_panoptic(
        world / "open_vocab/panoptic_ov_test.json",
        world / "open_vocab/panoptic_ov_test",
        images,
        task="open_vocab",
    )
    instances = read_coco_instances(world / "open_vocab/instances_ov_test.json", images, task="open_vocab")
    assert len(panoptic) == len(instances) == split_size("ov_test")
    names = [name for name, thing in panoptic[0].categories if thing]
    assert len(names) == 36 and "purple star" in names
    for record in instances:  # every image shows a held-out composition
        assert {segment.category for segment in record.segments} & HELD_OUT_NAMES
    training_files = [
        *(world / f"panoptic/panoptic_{split}.json" for split in SPLITS),
        *(world / f"instances/instances_{split}.json" for split in SPLITS),
        world / "refer/instances.json",
    ]
    training_names = {category["name"] for path in training_files for category in load(path)["categories"]}
    assert not training_names & set(names)


def test_refer_reader(world: Path) -> None:
    train = read_refer(world / "refer", split="train", image_dir=world / "images")
    assert train and all(record.image_path.is_file() for record in train)
    for split in ("val", "test"):
        records = read_refer(world / "refer", split=split, image_dir=world / "images", group_by_image=False)
        assert records and all(len(record.expressions) == 1 for record in records)
    refs = load_refs_pickle(world / "refer/refs(unc).p")
    assert {ref["split"] for ref in refs} == set(SPLITS)
    assert all(2 <= len(ref["sentences"]) <= 3 for ref in refs)


def test_reasonseg_reader(world: Path) -> None:
    for split in SPLITS:
        everything = read_reasonseg(world / "reasonseg" / split)
        phrases = read_reasonseg(world / "reasonseg" / split, query_type="phrase")
        sentences = read_reasonseg(world / "reasonseg" / split, query_type="sentence")
        assert len(everything) == split_size(split) == len(phrases) + len(sentences)
    explained = read_reasonseg(
        world / "reasonseg/train", explanatory_json=world / "reasonseg/explanatory/train.json"
    )
    with_explanation = [r for r in explained if r.expressions[0].explanation]
    assert with_explanation and all(r.expressions[0].is_sentence for r in with_explanation)


def test_gcg_readers(world: Path) -> None:
    train = read_grandf(world / "gcg/gcg_train.json", world / "images/train")
    assert len(train) == IMAGES and all(record.phrases for record in train)
    for split in ("val", "test"):
        root = world / "gcg/val_test"
        records = read_gcg_eval(
            root / f"{split}_gcg_coco_mask_gt.json",
            root / f"{split}_gcg_coco_caption_gt.json",
            world / "images" / split,
        )
        assert len(records) == split_size(split)
        for record in records:
            assert record.image_path.is_file() and len(record.segments) == len(record.extra["labels"])
            assert all(label in record.caption for label in record.extra["labels"])
            assert all(segment.mask.decode().any() for segment in record.segments)


def test_visual_prompt_readers(world: Path) -> None:
    for split in SPLITS:
        records = read_coco_vgd(
            world / f"vgd/vgd_{split}.json",
            world / f"instances/instances_{split}.json",
            world / "images" / split,
            synthesize_missing=False,
        )
        assert len(records) == split_size(split)
        assert all(
            set(s.visual_prompts) == {"point", "scribble", "box", "mask"} for r in records for s in r.segments
        )
    for split in ("val", "test"):
        records = read_coco_interactive(
            world / f"interactive/coco_interactive_{split}_psalm.json",
            world / "images" / split,
            instances_json=world / f"instances/instances_{split}.json",
        )
        assert len(records) == split_size(split)
        assert all(len(segment.visual_prompts) == 4 for record in records for segment in record.segments)


def test_llava_readers(world: Path) -> None:
    for name in ("llava_train.json", "pretrain_train.json"):
        records = read_llava(world / "llava" / name, world / "images/train")
        assert len(records) == IMAGES
        for record in records:
            turns = record.conversations
            assert record.image_path.is_file() and turns[0]["value"].startswith("<image>\n")
            assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert 1 <= len(turns) // 2 <= 4


def test_training_specs_load(world: Path) -> None:
    sources = load(world / "world.json")["training_sources"]
    for text in [*sources["pretrain"], *sources["finetune"]]:
        spec = parse_dataset_spec(text)
        records = load_records(spec, data_root=world)
        assert records and all(record.source == spec.name for record in records)


# --- the formats agree with each other -----------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_panoptic_instances_and_semantic_agree(world: Path, split: str) -> None:
    panoptic = load(world / f"panoptic/panoptic_{split}.json")
    instances = load(world / f"instances/instances_{split}.json")
    class_index = {
        category["id"]: index
        for index, category in enumerate(sorted(panoptic["categories"], key=lambda c: c["id"]))
    }
    things_by_image: dict[int, list[dict]] = {}
    for annotation in instances["annotations"]:
        things_by_image.setdefault(annotation["image_id"], []).append(annotation)
    for entry in panoptic["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(world / f"panoptic/panoptic_{split}" / entry["file_name"])))
        segments = entry["segments_info"]
        assert {segment["id"] for segment in segments} == set(np.unique(ids).tolist())  # no void
        stuff = [segment["category_id"] for segment in segments if segment["category_id"] > 100]
        assert len(stuff) == len(set(stuff)) >= 1
        things = [segment for segment in segments if segment["category_id"] <= 100]
        annotations = things_by_image[entry["image_id"]]
        assert len(things) == len(annotations)
        for segment, annotation in zip(things, annotations, strict=True):
            assert segment["category_id"] == annotation["category_id"]
            assert np.array_equal(ids == segment["id"], decode(annotation["segmentation"]))
            assert segment["area"] == annotation["area"] == int((ids == segment["id"]).sum())
        painted = np.zeros(ids.shape, dtype=np.uint8)
        for segment in segments:
            painted[ids == segment["id"]] = class_index[segment["category_id"]]
        labels = np.asarray(Image.open(world / f"semantic/{split}/{entry['file_name']}"))
        assert np.array_equal(labels, painted)


def category_masks(image_id: int, panoptic_png: Path, panoptic: dict) -> dict[str, np.ndarray]:
    """Every shape's and stuff class's mask in one image, by name (panoptic agrees with instances:
    see the test above)."""
    names = {category["id"]: category["name"] for category in panoptic["categories"]}
    ids = rgb_to_id(np.asarray(Image.open(panoptic_png)))
    entry = next(a for a in panoptic["annotations"] if a["image_id"] == image_id)
    masks: dict[str, np.ndarray] = {}
    for segment in entry["segments_info"]:
        name = names[segment["category_id"]]
        masks[name] = masks.get(name, np.zeros(ids.shape, dtype=bool)) | (ids == segment["id"])
    return masks


@pytest.mark.parametrize("split", SPLITS)
def test_reasonseg_targets_match_their_category(world: Path, split: str) -> None:
    panoptic = load(world / f"panoptic/panoptic_{split}.json")
    for json_path in sorted((world / "reasonseg" / split).glob("*.json")):
        annotation = load(json_path)
        target = reasonseg_label_map(annotation["shapes"], SIDE, SIDE) == TARGET_VALUE
        masks = category_masks(
            int(json_path.stem), world / f"panoptic/panoptic_{split}/{json_path.stem}.png", panoptic
        )
        ious = {name: (mask & target).sum() / (mask | target).sum() for name, mask in masks.items()}
        category = max(ious, key=ious.get)
        assert ious[category] >= 0.9, (json_path, ious)
        facts = THING_FACTS.get(category) or STUFF_FACTS[category]
        for query in annotation["text"]:
            assert any(fact in query for fact in facts) and category not in query.lower().split()


def test_gcg_phrases_are_caption_slices_grounding_their_words(world: Path) -> None:
    instances = load(world / "instances/instances_train.json")
    names = {category["id"]: category["name"] for category in instances["categories"]}
    described = {
        a["segmentation"]["counts"]: (
            a["attributes"]["colour"],
            names[a["category_id"]],
            a["attributes"]["size"],
        )
        for a in instances["annotations"]
    }
    for entry in load(world / "gcg/gcg_train.json"):
        for phrase, grounding in entry["groundings"].items():
            start, end = grounding["token_positives"]
            assert entry["caption"][start:end] == phrase
            words = phrase.lower().split()
            if words[-1] in STUFF:
                assert len(grounding["rle_masks"]) == 1
                continue
            for rle in grounding["rle_masks"]:
                colour, shape, size = described[rle["counts"]]
                assert colour in words and (shape in words or f"{shape}s" in words or f"{shape}es" in words)
                assert len(grounding["rle_masks"]) > 1 or size in words


RELATION_WORDS = (
    ("to the left of", "left"),
    ("left of", "left"),
    ("to the right of", "right"),
    ("right of", "right"),
    ("above", "above"),
    ("over", "above"),
    ("below", "below"),
    ("under", "below"),
)


def matching(description: str, objects: list[dict]) -> list[dict]:
    """The objects a description like "small blue star" / "blue star" / "star" fits."""
    words = description.split()
    keys = ("shape", "colour", "size")[: len(words)]
    return [
        item
        for item in objects
        if all(item[key] == word for key, word in zip(keys, reversed(words), strict=True))
    ]


def resolve(sentence: str, objects: list[dict]) -> list[dict]:
    """Parse a referring sentence of the world's grammar back into the objects it fits."""
    text = sentence.removeprefix("the ").removesuffix(" in the picture")
    for words, relation in RELATION_WORDS:
        if f" {words} the " in text:
            described, landmark_text = text.split(f" {words} the ")
            (landmark,) = matching(landmark_text, objects)
            candidates = matching(described, [item for item in objects if item is not landmark])
            axis, sign = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}[
                relation
            ]
            return [item for item in candidates if sign * (item[axis] - landmark[axis]) > 0]
    return matching(text, objects)


def test_referring_expressions_are_unique(world: Path) -> None:
    instances = load(world / "refer/instances.json")
    names = {category["id"]: category["name"] for category in instances["categories"]}
    objects: dict[int, list[dict]] = {}
    for annotation in instances["annotations"]:
        rows, cols = np.nonzero(decode(annotation["segmentation"]))
        attributes = annotation["attributes"]
        objects.setdefault(annotation["image_id"], []).append(
            {
                "id": annotation["id"],
                "shape": names[annotation["category_id"]],
                "colour": attributes["colour"],
                "size": attributes["size"],
                "x": cols.mean(),
                "y": rows.mean(),
            }
        )
    refs = load_refs_pickle(world / "refer/refs(unc).p")
    for ref in refs:
        for sentence in ref["sentences"]:
            found = resolve(sentence["sent"], objects[ref["image_id"]])
            assert [item["id"] for item in found] == [ref["ann_id"]], sentence["sent"]
    sentences_by_image: dict[int, list[str]] = {}
    for ref in refs:
        sentences_by_image.setdefault(ref["image_id"], []).extend(s["sent"] for s in ref["sentences"])
    assert all(len(s) == len(set(s)) for s in sentences_by_image.values())


def disk(side: int, x: int, y: int, radius: int) -> np.ndarray:
    rows, cols = np.mgrid[0:side, 0:side]
    return (cols - x) ** 2 + (rows - y) ** 2 <= radius**2


def test_look_alikes_are_told_apart_by_a_relation() -> None:
    stars = [Thing("star", "blue", "small", disk(100, x, 50, 5)) for x in (15, 85)]
    circle = Thing("circle", "red", "large", disk(100, 50, 50, 12))
    things = [stars[0], circle, stars[1]]
    objects = [
        {
            "id": i,
            "shape": t.shape,
            "colour": t.colour,
            "size": t.size,
            "x": t.centroid[0],
            "y": t.centroid[1],
        }
        for i, t in enumerate(things)
    ]
    for index in range(3):
        sentences = referring_sentences(things, index, 100)
        assert len(sentences) >= 2
        for sentence in sentences:
            assert [item["id"] for item in resolve(sentence, objects)] == [index]
    assert referring_sentences(things, 0, 100)[0] == "the star left of the circle"
    twins = [Thing("star", "blue", "small", disk(100, 50, y, 5)) for y in (20, 80)]
    assert referring_sentences(twins, 0, 100) == []  # nothing to tell them apart by


def test_interactive_and_vgd_prompts_agree(world: Path) -> None:
    for split in ("val", "test"):
        interactive = load(world / f"interactive/coco_interactive_{split}_psalm.json")
        vgd = load(world / f"vgd/vgd_{split}.json")
        for thin_entry, wide_entry in zip(interactive, vgd, strict=True):
            for thin, wide in zip(thin_entry["anns"], wide_entry["annotations"], strict=True):
                mask = decode(thin["segmentation"])
                point = decode(thin["point_visual_prompt_mask"])
                scribble = decode(thin["scribble_visual_prompt_mask"])
                assert point.sum() == 1 and (point & mask).any() and (scribble & ~mask).sum() == 0
                stored = wide["visual_prompts"]
                assert np.array_equal(decode(stored["point_visual_prompt"]), dilate_disk(point, 10))
                assert np.array_equal(decode(stored["scribble_visual_prompt"]), dilate_disk(scribble, 5))
                for kind in ("box", "mask"):
                    prompt = decode(thin[f"{kind}_visual_prompt_mask"])
                    assert prompt.any() and np.array_equal(prompt, decode(stored[f"{kind}_visual_prompt"]))


def test_held_out_compositions_only_in_open_vocabulary_split(world: Path) -> None:
    instances = load(world / "instances/instances_train.json")
    names = {category["id"]: category["name"] for category in instances["categories"]}
    for split in SPLITS:
        for annotation in load(world / f"instances/instances_{split}.json")["annotations"]:
            pair = (annotation["attributes"]["colour"], names[annotation["category_id"]])
            assert pair not in HELD_OUT
    open_vocab = load(world / "open_vocab/instances_ov_test.json")
    composition = {category["id"]: category["name"] for category in open_vocab["categories"]}
    for image in open_vocab["images"]:
        shown = {
            composition[a["category_id"]] for a in open_vocab["annotations"] if a["image_id"] == image["id"]
        }
        assert shown & HELD_OUT_NAMES


# --- geometry helpers ----------------------------------------------------------------------------


def test_disk_morphology_matches_a_euclidean_distance_transform() -> None:
    from scipy.ndimage import distance_transform_edt

    seeds = np.random.default_rng(0).random((40, 50)) > 0.97
    for radius in (1, 5, 10, 7.5):
        assert np.array_equal(dilate_disk(seeds, radius), distance_transform_edt(~seeds) <= radius)
    square = np.zeros((20, 20), dtype=bool)
    square[4:16, 4:16] = True
    assert np.array_equal(erode_disk(square, 2), np.pad(np.ones((8, 8), dtype=bool), 6))


def test_outline_polygons_and_holes() -> None:
    ring = np.zeros((20, 20), dtype=bool)
    ring[3:15, 3:15] = True
    assert not has_holes(ring)
    ring[6:9, 6:9] = False
    assert has_holes(ring)
    shapes = np.zeros((30, 40), dtype=bool)
    shapes[2:10, 3:12] = True
    shapes[15:25, 20:35] = True
    shapes[18:22, 10:20] = True  # a bar touching the second box: still two components
    polygons = outline_polygons(shapes)
    assert len(polygons) == 2
    shapes_json = [{"label": "target", "points": points} for points in polygons]
    assert np.array_equal(reasonseg_label_map(shapes_json, 30, 40) == TARGET_VALUE, shapes)


# --- reproducible, all-or-nothing ----------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(world: Path, tmp_path: Path) -> None:
    summary = generate_world(tmp_path / "again", seed=SEED, images=IMAGES, image_size=SIDE)
    assert summary == load(tmp_path / "again" / "world.json")
    generate_world(tmp_path / "other", seed=SEED + 1, images=IMAGES, image_size=SIDE)
    assert tree_digest(tmp_path / "again") == tree_digest(world)
    assert tree_digest(tmp_path / "other") != tree_digest(world)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_world(out, images=1, image_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xsam.data.synthetic.world as world_module

    def explode(self) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(world_module.LlavaWriter, "finish", explode)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(tmp_path / "empty", images=2, image_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert not any((tmp_path / "empty").iterdir())
