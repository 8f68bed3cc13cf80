"""REFER (RefCOCO / RefCOCO+ / RefCOCOg) and LISA ReasonSeg readers.

The fixtures under ``tests/data/formats/{refer,reasonseg}/`` are written by
``make_referring_fixtures.py``; the regions below are spelled out again on purpose, so a wrong fixture
fails here too.
"""

import collections
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from locations import FORMATS
from xsam.data.formats.reasonseg import (
    FILL_RULES,
    IGNORE_VALUE,
    TARGET_VALUE,
    rasterize_polygon,
    read_reasonseg,
    reasonseg_label_map,
    split_queries,
)
from xsam.data.formats.refer import (
    UnsafePickleError,
    load_refs_pickle,
    read_refer,
    training_sentence_combinations,
)

FIXTURES = FORMATS
REFCOCO = FIXTURES / "refer" / "refcoco"
REFCOCOG = FIXTURES / "refer" / "refcocog"
REASONSEG = FIXTURES / "reasonseg" / "val"
EXPLANATORY = FIXTURES / "reasonseg" / "explanatory.json"
IMAGES = Path("/datasets/coco/train2014")  # never opened by read_refer


def box(size, rows, cols):
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of an ``size`` (H, W) array."""
    array = np.zeros(size, dtype=bool)
    array[rows[0] : rows[1], cols[0] : cols[1]] = True
    return array


def art(lines):
    return np.array([[char == "#" for char in line] for line in lines])


# --- REFER ---------------------------------------------------------------------------------------


def test_training_records_group_all_referred_objects_of_an_image():
    (record,) = read_refer(REFCOCO, dataset="refcoco", split="train", image_dir=IMAGES)
    assert record.task == "referring" and record.source == "refcoco"
    assert record.image_id == 1 and (record.height, record.width) == (24, 32)
    assert record.image_path == IMAGES / "COCO_train2014_000000000001.jpg"
    # annotation order of instances.json (102 before 101), not the refs' order; 103 is never referred
    assert record.extra["ann_ids"] == [102, 101]
    assert record.extra["ref_ids"] == [2, 1]
    assert record.extra["category_ids"] == [2, 1]
    # lower-cased, de-duplicated ("The red mug" == "the red mug"), sorted; the text is the first
    assert record.extra["sentences"] == [
        ["both plates", "the plates", "two plates"],
        ["mug on the left", "the red mug"],
    ]
    assert [expression.text for expression in record.expressions] == ["both plates", "mug on the left"]
    plates, mug = (expression.masks for expression in record.expressions)
    assert len(plates) == 1 and len(mug) == 1
    expected_plates = box((24, 32), (12, 20), (4, 10)) | box((24, 32), (14, 18), (20, 28))
    assert np.array_equal(plates[0].decode(), expected_plates)
    assert np.array_equal(mug[0].decode(), box((24, 32), (2, 10), (3, 12)))
    assert all(not e.is_sentence and e.explanation is None for e in record.expressions)
    assert record.ignore_mask is None


def test_training_sentence_combinations_follow_the_official_capped_product():
    (record,) = read_refer(REFCOCO, split="train", image_dir=IMAGES)
    combinations = training_sentence_combinations(record)
    # itertools.product (last object fastest), cut at 3 + 2 = 5 combinations
    assert combinations == [
        ["both plates", "mug on the left"],
        ["both plates", "the red mug"],
        ["the plates", "mug on the left"],
        ["the plates", "the red mug"],
        ["two plates", "mug on the left"],
    ]
    assert combinations[0] == [expression.text for expression in record.expressions]
    with pytest.raises(ValueError, match="group_by_image=True"):
        training_sentence_combinations(read_reasonseg(REASONSEG)[0])


def test_evaluation_records_hold_one_sentence_each():
    records = read_refer(REFCOCO, split="val", image_dir=IMAGES)  # not train: one record per sentence
    assert [record.expressions[0].text for record in records] == ["silver spoon", "the spoon"]
    for record in records:
        assert record.image_id == 2 and (record.height, record.width) == (20, 28)
        assert record.image_path == IMAGES / "COCO_train2014_000000000002.jpg"
        assert len(record.expressions) == 1 and record.extra["ann_ids"] == [201]
        # the compressed RLE of annotation 201
        assert np.array_equal(record.expressions[0].masks[0].decode(), box((20, 28), (5, 15), (6, 20)))

    ungrouped = read_refer(REFCOCO, split="train", image_dir=IMAGES, group_by_image=False)
    assert [(r.extra["ref_ids"], r.expressions[0].text) for r in ungrouped] == [
        ([2], "both plates"),
        ([2], "the plates"),
        ([2], "two plates"),
        ([1], "mug on the left"),
        ([1], "the red mug"),
    ]
    assert training_sentence_combinations(ungrouped[0]) == [["both plates"]]
    grouped_val = read_refer(REFCOCO, split="val", image_dir=IMAGES, group_by_image=True)
    assert len(grouped_val) == 1 and grouped_val[0].extra["sentences"] == [["silver spoon", "the spoon"]]


def test_splits_and_split_files():
    # refcocog defaults to refs(umd).p, whose third ref is in "test"
    (test_record,) = read_refer(
        REFCOCOG, dataset="refcocog", split="test", image_dir=IMAGES, group_by_image=True
    )
    assert test_record.extra["split_by"] == "umd" and test_record.extra["ref_ids"] == [3]
    assert test_record.source == "refcocog"
    with pytest.raises(ValueError, match=r"no refs in split 'val'.*\['test', 'train'\]"):
        read_refer(REFCOCOG, dataset="refcocog", split="val", image_dir=IMAGES)
    with pytest.raises(ValueError, match=r"\['train', 'val'\]"):
        read_refer(REFCOCO, split="testA", image_dir=IMAGES)
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p"):
        read_refer(REFCOCO, split_by="google", image_dir=IMAGES)
    with pytest.raises(ValueError, match="dataset must be one of"):
        read_refer(REFCOCO, dataset="refclef", image_dir=IMAGES)


def test_missing_refer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "refs(unc).p"))):
        read_refer(tmp_path, image_dir=IMAGES)
    shutil.copy(REFCOCO / "refs(unc).p", tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "instances.json"))):
        read_refer(tmp_path, image_dir=IMAGES)


def test_annotation_without_a_usable_polygon_gets_an_empty_mask(tmp_path):
    folder = Path(shutil.copytree(REFCOCO, tmp_path / "refcoco"))
    instances = json.loads((folder / "instances.json").read_text())
    for annotation in instances["annotations"]:
        if annotation["id"] == 101:
            annotation["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]  # two points: not a polygon
    (folder / "instances.json").write_text(json.dumps(instances))
    (record,) = read_refer(folder, image_dir=IMAGES)
    assert not record.expressions[1].masks[0].decode().any()


class _RunsShell:
    """Pickles as a call of ``os.system``: what a poisoned refs file would contain."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _RunsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "refcoco"
    folder.mkdir()
    shutil.copy(REFCOCO / "instances.json", folder)
    (folder / "refs(unc).p").write_bytes(pickle.dumps([_RunsShell(f"touch {marker}")], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p.*system"):
        read_refer(folder, image_dir=IMAGES)
    assert not marker.exists()

    for payload, name in ((_RunsEval(), r"builtin_*\.eval"), (collections.OrderedDict(), "OrderedDict")):
        path = tmp_path / "payload.p"
        path.write_bytes(pickle.dumps([payload], protocol=2))
        with pytest.raises(UnsafePickleError, match=name):
            load_refs_pickle(path)


def test_restricted_unpickler_reads_plain_data_and_python2_strings(tmp_path):
    path = tmp_path / "refs(unc).p"
    data = [
        {
            "split": "train",
            "ids": (1, 2),
            "set": {3},
            "frozen": frozenset({4}),
            "x": 0.5,
            "ok": True,
            "n": None,
        }
    ]
    path.write_bytes(pickle.dumps(data, protocol=2))  # sets go through __builtin__.set: allowed
    assert load_refs_pickle(path) == data
    # Python 2 wrote byte strings with SHORT_BINSTRING: [{'split': 'train'}]
    path.write_bytes(b"\x80\x02]}U\x05splitU\x05trainsa.")
    assert load_refs_pickle(path) == [{"split": "train"}]
    path.write_bytes(pickle.dumps({"not": "a list"}, protocol=2))
    with pytest.raises(ValueError, match="list of ref dicts"):
        load_refs_pickle(path)
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_refs_pickle(path)


# --- ReasonSeg -----------------------------------------------------------------------------------

A_SIZE = (20, 24)
LARGE_TARGET = box(A_SIZE, (2, 17), (2, 21))  # OpenCV fills integer rectangles inclusively
IGNORE = box(A_SIZE, (5, 13), (8, 17))
SMALL_TARGET = box(A_SIZE, (7, 11), (10, 14))

# b.jpg's triangle [[25.8, 5.4], [5.5, 13.4], [20.1, 0.6]] on 16 x 20, as drawn by cv2.polylines +
# cv2.fillPoly (checked with OpenCV 4.8 / 4.10 and 4.12 / 5.0): the two rules differ on rows 1-6
TRIANGLE = {
    "opencv>=4.11": art(
        [
            "...................#",
            "..................##",
            ".................###",
            "................####",
            "...............#####",
            "..............######",
            ".............#######",
            "...........#########",
            "..........########..",
            ".........#######....",
            "........######......",
            ".......####.........",
            "......###...........",
            ".....##.............",
            "....................",
            "....................",
        ]
    ),
    "opencv<4.11": art(
        [
            "...................#",
            ".................###",
            "................####",
            "...............#####",
            "..............######",
            ".............#######",
            "............########",
            "...........#########",
            "..........########..",
            ".........#######....",
            "........######......",
            ".......####.........",
            "......###...........",
            ".....##.............",
            "....................",
            "....................",
        ]
    ),
}


def test_reasonseg_records():
    a, b = read_reasonseg(REASONSEG, explanatory_json=EXPLANATORY)
    assert a.task == "reasoning" and a.image_id == "a.jpg" and a.image_path == REASONSEG / "a.jpg"
    assert (a.height, a.width) == A_SIZE and (b.height, b.width) == (16, 20)
    assert [e.text for e in a.expressions] == [
        "What would you pour hot coffee into?",
        "Which object keeps a drink warm?",
    ]
    assert all(e.is_sentence and e.explanation == "A mug is made to hold hot drinks." for e in a.expressions)
    assert a.extra["explanatory_query"] == "What would you pour hot coffee into?"
    assert a.extra["split"] == "val" and a.source == "reasonseg"
    assert [e.text for e in b.expressions] == ["the lid"]
    assert not b.expressions[0].is_sentence and b.expressions[0].explanation is None
    assert b.ignore_mask is None
    without = read_reasonseg(REASONSEG)
    assert all(e.explanation is None for record in without for e in record.expressions)


def test_polygons_are_painted_largest_first():
    (a, _) = read_reasonseg(REASONSEG)
    # the ignore rectangle overwrites the large target; the small target overwrites the ignore one
    expected_target = (LARGE_TARGET & ~IGNORE) | SMALL_TARGET
    expected_ignore = IGNORE & ~SMALL_TARGET
    for expression in a.expressions:
        assert np.array_equal(expression.masks[0].decode(), expected_target)
    assert np.array_equal(a.ignore_mask.decode(), expected_ignore)
    # the flag shape covers the whole image but paints nothing
    assert not a.expressions[0].masks[0].decode()[0, 0] and not a.ignore_mask.decode()[19, 23]

    shapes = json.loads((REASONSEG / "a.json").read_text())["shapes"]
    labels = reasonseg_label_map(shapes, *A_SIZE)
    assert np.array_equal(labels == TARGET_VALUE, expected_target)
    assert np.array_equal(labels == IGNORE_VALUE, expected_ignore)
    assert np.array_equal(reasonseg_label_map(shapes[::-1], *A_SIZE), labels)  # file order is irrelevant


def test_equal_areas_keep_file_order():
    target = {"label": "target", "points": [[0, 0], [3, 0], [3, 3], [0, 3]]}
    ignore = {"label": "Ignore region", "points": [[2, 2], [5, 2], [5, 5], [2, 5]]}  # "ignore" anywhere
    overlap = box((8, 8), (2, 4), (2, 4))
    assert (reasonseg_label_map([target, ignore], 8, 8)[overlap] == IGNORE_VALUE).all()
    assert (reasonseg_label_map([ignore, target], 8, 8)[overlap] == TARGET_VALUE).all()


@pytest.mark.parametrize("fill_rule", FILL_RULES)
def test_polygon_rasterisation_matches_opencv(fill_rule):
    _, b = read_reasonseg(REASONSEG, fill_rule=fill_rule)
    assert np.array_equal(b.expressions[0].masks[0].decode(), TRIANGLE[fill_rule])
    points = json.loads((REASONSEG / "b.json").read_text())["shapes"][0]["points"]
    assert np.array_equal(rasterize_polygon(points, 16, 20, fill_rule=fill_rule), TRIANGLE[fill_rule])
    assert not rasterize_polygon([], 4, 4, fill_rule=fill_rule).any()
    assert not rasterize_polygon([[-9, -9], [-5, -9], [-5, -5]], 4, 4, fill_rule=fill_rule).any()


def test_rasterisation_matches_installed_opencv_on_random_polygons():
    import cv2  # a dev dependency: the cross-check always runs

    version = tuple(int(part) for part in cv2.__version__.split(".")[:2])
    fill_rule = "opencv<4.11" if version < (4, 11) else "opencv>=4.11"
    rng = np.random.default_rng(0)
    for trial in range(300):
        height, width = (int(size) for size in rng.integers(3, 40, 2))
        count, margin = int(rng.integers(1, 10)), 10 * (trial % 2)
        points = np.stack(
            [rng.uniform(-margin, width + margin, count), rng.uniform(-margin, height + margin, count)],
            axis=1,
        )
        expected = np.zeros((height, width), dtype=np.uint8)
        polygon = np.array([points], dtype=np.int32)
        cv2.polylines(expected, polygon, True, 1, 1)
        cv2.fillPoly(expected, polygon, 1)
        assert np.array_equal(rasterize_polygon(points, height, width, fill_rule=fill_rule), expected == 1)


def test_query_types_and_split_queries():
    assert [r.image_id for r in read_reasonseg(REASONSEG, query_type="sentence")] == ["a.jpg"]
    assert [r.image_id for r in read_reasonseg(REASONSEG, query_type="phrase")] == ["b.jpg"]
    queries = split_queries(read_reasonseg(REASONSEG))
    assert [(r.image_id, r.extra["query_index"], r.expressions[0].text) for r in queries] == [
        ("a.jpg", 0, "What would you pour hot coffee into?"),
        ("a.jpg", 1, "Which object keeps a drink warm?"),
        ("b.jpg", 0, "the lid"),
    ]
    assert queries[0].ignore_mask is queries[1].ignore_mask is not None


def test_empty_targets_are_skipped_unless_asked(tmp_path):
    shutil.copy(REASONSEG / "b.jpg", tmp_path / "c.jpg")
    shapes = [
        {"label": "flag", "points": [[0, 0], [5, 0], [5, 5]]},
        {"label": "ignore", "points": [[1, 1], [6, 1], [6, 6], [1, 6]]},
    ]
    (tmp_path / "c.json").write_text(
        json.dumps({"text": ["nothing"], "is_sentence": False, "shapes": shapes})
    )
    assert read_reasonseg(tmp_path) == []
    (record,) = read_reasonseg(tmp_path, skip_empty_targets=False)
    assert not record.expressions[0].masks[0].decode().any()
    assert np.array_equal(record.ignore_mask.decode(), box((16, 20), (1, 7), (1, 7)))


def test_cp1252_annotations_are_read(tmp_path):
    shutil.copy(REASONSEG / "b.jpg", tmp_path / "c.jpg")
    text = (
        '{"text": ["the chef\u2019s knife"], "shapes": [{"label": "t", "points": [[1, 1], [4, 1], [4, 4]]}]}'
    )
    (tmp_path / "c.json").write_bytes(text.encode("cp1252"))  # \u2019 is byte 0x92: not valid UTF-8
    (record,) = read_reasonseg(tmp_path)
    assert record.expressions[0].text == "the chef\u2019s knife" and not record.expressions[0].is_sentence


def test_reasonseg_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_reasonseg(missing)
    with pytest.raises(ValueError, match=r"no \*\.jpg"):
        read_reasonseg(tmp_path)
    shutil.copy(REASONSEG / "b.jpg", tmp_path / "c.jpg")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "c.json"))):
        read_reasonseg(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "explain.json"))):
        read_reasonseg(REASONSEG, explanatory_json=tmp_path / "explain.json")
    (tmp_path / "c.json").write_text(json.dumps({"text": ["x"], "shapes": [{"label": "t"}]}))
    with pytest.raises(ValueError, match=r"c\.json: malformed shape"):
        read_reasonseg(tmp_path)
    with pytest.raises(ValueError, match="query_type"):
        read_reasonseg(REASONSEG, query_type="long")
    with pytest.raises(ValueError, match="fill_rule"):
        read_reasonseg(REASONSEG, fill_rule="pycocotools")
