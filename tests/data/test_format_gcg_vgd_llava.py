"""GCG, VGD / interactive and LLaVA readers on tiny fixtures in the real formats, and visual-prompt
synthesis. Fixtures: ``tests/data/formats/{gcg,vgd,interactive,llava}`` (24 x 32 images), written by
``tests/data/formats/make_gcg_vgd_llava_fixtures.py``."""

import json

import numpy as np
import pytest

from locations import FORMATS
from script_support import load_script
from xsam.data.formats.gcg import (
    read_flickr_gcg,
    read_gcg_eval,
    read_grandf,
    read_refcocog_gcg,
    remove_overlapping_phrases,
)
from xsam.data.formats.llava import read_llava
from xsam.data.formats.visual_prompts import (
    PROMPT_KINDS,
    dilate_disk,
    read_coco_interactive,
    read_coco_vgd,
    synthesize_visual_prompts,
)
from xsam.tasks.records import Phrase

pytest.importorskip("scipy")

DATA = FORMATS
GCG, VGD, INTERACTIVE, LLAVA = DATA / "gcg", DATA / "vgd", DATA / "interactive", DATA / "llava"
H, W = 24, 32


def rect(top, left, bottom, right, shape=(H, W)):
    array = np.zeros(shape, dtype=bool)
    array[top:bottom, left:right] = True
    return array


def disk(center, radius, shape):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def union(masks):
    return np.logical_or.reduce([mask.decode() for mask in masks])


def spans(record):
    return [(p.start, p.end, record.caption[p.start : p.end]) for p in record.phrases]


def test_fixture_json_matches_the_generator(tmp_path):
    module = load_script(DATA / "make_gcg_vgd_llava_fixtures.py")
    module.main(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert len(written) == 9
    for relative in written:
        assert (tmp_path / relative).read_text() == (DATA / relative).read_text(), relative


# ------------------------------------------------------------------------------------------------ GCG
def test_grandf_normalises_sorts_and_removes_overlaps():
    records = read_grandf(GCG / "grandf.json", GCG / "images")
    assert len(records) == 1  # entry 2's only phrase is not in its caption
    record = records[0]
    assert (record.task, record.source, record.image_id) == ("gcg", "grandf", 1)
    assert record.image_path == GCG / "images" / "grandf_1.jpg"
    assert (record.height, record.width) == (H, W)  # from the RLE size, no height/width given
    assert record.caption == "a man holding a red cup."  # quotes stripped, lower-cased
    # "red cup" overlaps "a red cup"; " holding" starts where "a man" ends (dropped, official rule);
    # "a dog" does not occur in the caption
    assert spans(record) == [(0, 5, "a man"), (14, 23, "a red cup")]
    man, cup = record.phrases
    assert len(man.masks) == 2
    assert np.array_equal(union(man.masks), rect(0, 2, 20, 8))
    assert np.array_equal(cup.masks[0].decode(), rect(10, 20, 14, 26))


def test_grandf_source_names_psg():
    assert {r.source for r in read_grandf(GCG / "grandf.json", GCG / "images", source="psg")} == {"psg"}


def test_remove_overlapping_phrases_rule():
    def phrase(start, end):
        return Phrase(start, end, [])

    kept = remove_overlapping_phrases(
        [
            phrase(10, 14),
            phrase(0, 6),
            phrase(2, 4),
            phrase(6, 9),
            phrase(7, 8),
            phrase(3, 3),
            phrase(15, 40),
        ],
        caption_length=20,
    )
    # sorted by start; (2, 4) overlaps (0, 6); (6, 9) touches (0, 6) -> dropped, so (7, 8) survives;
    # (3, 3) is empty and (15, 40) leaves the caption
    assert [(p.start, p.end) for p in kept] == [(0, 6), (7, 8), (10, 14)]
    same_start = remove_overlapping_phrases([phrase(0, 3), phrase(0, 8)], caption_length=10)
    assert [(p.start, p.end) for p in same_start] == [(0, 3)]  # ties keep file order


def test_refcocog_gcg_locates_sentences_by_search():
    records = read_refcocog_gcg(GCG / "refcocog_gcg.json", GCG / "images")
    first, second = records
    assert first.caption == "the woman in red stands beside a white dog."
    assert spans(first) == [(0, 16, "the woman in red"), (31, 42, "a white dog")]  # "a horse" is absent
    assert (first.height, first.width) == (H, W)  # read from the image header
    assert first.image_path == GCG / "images" / "refcocog_1.jpg"
    assert first.image_id == 0  # no image_id in the entry: its index
    woman = first.phrases[0].masks
    assert len(woman) == 1  # two polygons, one object
    woman_pixels = woman[0].decode()
    assert woman_pixels[2:9, 2:5].all() and woman_pixels[2:9, 9:11].all()
    assert not woman_pixels[:, 7].any() and not woman_pixels[12:].any()
    # the key names the image when img_file_name is absent; a repeated sentence maps to the same
    # (first) occurrence, so its duplicate is removed
    assert second.image_path == GCG / "images" / "refcocog_2.jpg"
    assert second.image_id == 7
    assert spans(second) == [(0, 5, "a cup")]
    assert second.phrases[0].masks[0].decode()[3:5, 3:5].all()


def test_flickr_gcg_skips_short_captions_and_images_without_annotations():
    records = read_flickr_gcg(GCG / "flickr_gcg.json", GCG / "images")
    assert [r.image_id for r in records] == [2]  # 1: two-word caption; 3: no annotation
    record = records[0]
    assert record.caption == "two dogs run on grass."
    assert spans(record) == [(0, 8, "two dogs"), (16, 21, "grass")]  # "dogs" overlaps "two dogs"
    assert np.array_equal(record.phrases[0].masks[0].decode(), rect(6, 4, 16, 20))
    assert np.array_equal(record.phrases[1].masks[0].decode(), rect(18, 0, 24, 32))
    assert [r.image_id for r in read_flickr_gcg(GCG / "flickr_gcg.json", GCG / "images", min_words=2)] == [
        1,
        2,
    ]


def test_gcg_eval_ground_truth():
    records = read_gcg_eval(
        GCG / "val_gcg_coco_mask_gt.json", GCG / "val_gcg_coco_caption_gt.json", GCG / "images"
    )
    first, second = records
    assert (first.image_id, first.caption) == ("img_a", "A Cat sits on a mat.")  # caption unmodified
    assert first.image_path == GCG / "images" / "img_a.jpg"
    assert first.extra["labels"] == ["A Cat", "a mat"]
    assert first.phrases == []
    assert [s.category for s in first.segments] == ["object", "object"]
    assert np.array_equal(first.segments[0].mask.decode(), rect(4, 4, 12, 12))
    assert np.array_equal(first.segments[1].mask.decode(), rect(14, 0, 24, 32))
    # no file_name / height / width: <id>.jpg and the RLE size
    assert second.image_path == GCG / "images" / "img_b.jpg"
    assert (second.height, second.width) == (H, W)
    assert np.array_equal(second.segments[0].mask.decode(), rect(0, 16, 8, 32))


def test_gcg_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        read_grandf(tmp_path / "missing.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"image_id": 1, "file_name": "a.jpg", "groundings": {}}]))
    with pytest.raises(ValueError, match=r"broken\.json: entry 0: missing key 'caption'"):
        read_grandf(broken, tmp_path)
    bad_grounding = tmp_path / "bad_grounding.json"
    entry = {
        "image_id": 1,
        "file_name": "a.jpg",
        "caption": "a cat",
        "groundings": {"a cat": {"rle_masks": []}},
    }
    bad_grounding.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match="grounding 'a cat': missing key 'token_positives'"):
        read_grandf(bad_grounding, tmp_path)
    no_size = tmp_path / "no_size.json"
    ref = {"sentence": "a cat", "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}
    no_size.write_text(
        json.dumps([{"0": {"img_file_name": "nowhere.jpg", "caption": "a cat", "refs": [ref]}}])
    )
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jpg"):
        read_refcocog_gcg(no_size, tmp_path)
    captions = json.loads((GCG / "val_gcg_coco_caption_gt.json").read_text())
    captions["annotations"] = captions["annotations"][:1]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match=r"image 'img_b' has no caption in .*captions\.json"):
        read_gcg_eval(GCG / "val_gcg_coco_mask_gt.json", tmp_path / "captions.json", GCG / "images")


# ------------------------------------------------------------------------------------------- VGD
def test_coco_vgd_reads_stored_prompts():
    records = read_coco_vgd(VGD / "coco_vgd.json", VGD / "instances.json", VGD / "images")
    (record,) = records
    assert (record.task, record.image_id, record.height, record.width) == ("vgd", 1, H, W)
    assert record.image_path == VGD / "images" / "vgd_1.jpg"
    assert record.categories == [("person", True), ("car", True)]  # id order (1, 3)
    car, person = record.segments
    assert (car.category, car.category_id, person.category, person.category_id) == ("car", 3, "person", 1)
    assert car.mask.decode()[5:15, 5:19].all() and not car.mask.decode()[17:].any()
    assert set(car.visual_prompts) == set(PROMPT_KINDS)
    assert np.array_equal(car.visual_prompts["point"].decode(), rect(8, 10, 11, 13))
    assert np.array_equal(car.visual_prompts["scribble"].decode(), rect(6, 6, 8, 18))
    assert np.array_equal(car.visual_prompts["box"].decode(), rect(3, 4, 17, 21))
    assert np.array_equal(car.visual_prompts["mask"].decode(), rect(4, 4, 16, 20))
    assert set(person.visual_prompts) == {"box", "mask"}  # the empty point and scribble are dropped
    assert np.array_equal(person.mask.decode(), rect(18, 2, 23, 12))


def test_coco_vgd_synthesises_when_the_prompt_file_is_missing(tmp_path):
    records = read_coco_vgd(tmp_path / "absent.json", VGD / "instances.json", VGD / "images", seed=3)
    (record,) = records  # image 2 has no instance
    assert [s.category_id for s in record.segments] == [3, 1]  # the crowd instance is skipped
    again = read_coco_vgd(None, VGD / "instances.json", VGD / "images", seed=3)
    other_seed = read_coco_vgd(None, VGD / "instances.json", VGD / "images", seed=4)
    car = record.segments[0]
    for kind in PROMPT_KINDS:
        prompt = car.visual_prompts[kind].decode()
        assert prompt.shape == (H, W) and prompt.any()
        assert np.array_equal(prompt, again[0].segments[0].visual_prompts[kind].decode())
    assert any(
        not np.array_equal(
            car.visual_prompts[k].decode(), other_seed[0].segments[0].visual_prompts[k].decode()
        )
        for k in ("point", "scribble", "box")
    )
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        read_coco_vgd(
            tmp_path / "absent.json", VGD / "instances.json", VGD / "images", synthesize_missing=False
        )


def test_vgd_errors_name_the_file_and_key(tmp_path):
    entry = json.loads((VGD / "coco_vgd.json").read_text())[0]
    del entry["annotations"][1]["visual_prompts"]
    (tmp_path / "vgd.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=r"vgd\.json: entry 0: annotation 103: missing key 'visual_prompts'"):
        read_coco_vgd(tmp_path / "vgd.json", VGD / "instances.json", VGD / "images")
    entry = json.loads((VGD / "coco_vgd.json").read_text())[0]
    entry["annotations"][0]["category_id"] = 99
    (tmp_path / "vgd.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match="annotation 101: category_id 99"):
        read_coco_vgd(tmp_path / "vgd.json", VGD / "instances.json", VGD / "images")


# ---------------------------------------------------------------------------------- interactive
def test_coco_interactive_psalm_layout_dilates_points_and_scribbles():
    records = read_coco_interactive(
        INTERACTIVE / "coco_interactive_val_psalm.json",
        INTERACTIVE / "images",
        instances_json=VGD / "instances.json",
    )
    first, second = records
    assert (first.task, first.image_id, first.source) == ("interactive", 5, "coco_interactive")
    assert first.image_path == INTERACTIVE / "images" / "int_1.jpg"
    (segment,) = first.segments  # annotation 202 has only empty prompts
    assert (segment.category, segment.category_id) == ("car", 3)
    assert np.array_equal(segment.visual_prompts["point"].decode(), disk((12, 16), 10, (H, W)))
    stroke = rect(10, 8, 11, 24)
    assert np.array_equal(segment.visual_prompts["scribble"].decode(), dilate_disk(stroke, 5))
    assert segment.visual_prompts["scribble"].decode()[5:16, 8:24].all()  # 5 px above and below
    assert np.array_equal(segment.visual_prompts["box"].decode(), rect(4, 4, 20, 24))
    # an entry in the VGD layout (the official cached json) is read as is, without dilation
    assert (second.task, second.image_id) == ("interactive", 6)
    assert np.array_equal(second.segments[0].visual_prompts["point"].decode(), rect(4, 4, 7, 7))
    unnamed = read_coco_interactive(INTERACTIVE / "coco_interactive_val_psalm.json", INTERACTIVE / "images")
    assert (unnamed[0].segments[0].category, unnamed[0].segments[0].category_id) == ("", 3)


def test_coco_interactive_rejects_unknown_layout(tmp_path):
    (tmp_path / "odd.json").write_text(json.dumps([{"image": "a.jpg"}]))
    with pytest.raises(ValueError, match=r"odd\.json: entry 0: expected an object with 'anns'"):
        read_coco_interactive(tmp_path / "odd.json", tmp_path)


# -------------------------------------------------------------------------------------- synthesis
def blob(shape=(64, 64), box=(12, 12, 52, 52)):
    return rect(*box, shape=shape)


def test_synthesis_is_deterministic_per_generator_state():
    mask = blob()
    for kind in PROMPT_KINDS:
        first = synthesize_visual_prompts(mask, kind, np.random.default_rng(7))
        second = synthesize_visual_prompts(mask, kind, np.random.default_rng(7))
        assert first.dtype == bool and first.shape == mask.shape
        assert np.array_equal(first, second)
    draws = {synthesize_visual_prompts(mask, "point", np.random.default_rng(s)).tobytes() for s in range(6)}
    assert len(draws) > 1


@pytest.mark.parametrize("seed", range(5))
def test_point_prompt_is_a_radius_10_disk_centred_inside_the_mask(seed):
    mask = np.zeros((64, 64), dtype=bool)
    mask[12:52, 12:30] = True  # an L shape: the centroid region is not all inside
    mask[40:52, 12:52] = True
    prompt = synthesize_visual_prompts(mask, "point", np.random.default_rng(seed))
    rows, cols = np.nonzero(prompt)
    center = (round(float(rows.mean())), round(float(cols.mean())))
    assert mask[center]
    assert np.array_equal(prompt, disk(center, 10, mask.shape))


@pytest.mark.parametrize("seed", range(5))
def test_box_prompt_is_the_bounding_box_scaled_by_0_9_to_1_1(seed):
    mask = blob(box=(10, 14, 50, 44))  # 40 x 30 box, centre (30, 29)
    prompt = synthesize_visual_prompts(mask, "box", np.random.default_rng(seed))
    rows, cols = np.nonzero(prompt)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert prompt.sum() == height * width  # a filled rectangle
    assert 0.9 * 40 - 2 <= height <= 1.1 * 40 + 2 and 0.9 * 30 - 2 <= width <= 1.1 * 30 + 2
    assert (0.9 * 40 - 2) * (0.9 * 30 - 2) <= prompt.sum() <= (1.1 * 40 + 2) * (1.1 * 30 + 2)
    assert abs((rows.min() + rows.max() + 1) / 2 - 30) <= 1.5
    assert abs((cols.min() + cols.max() + 1) / 2 - 29) <= 1.5


@pytest.mark.parametrize("seed", range(5))
def test_scribble_prompt_is_a_dilated_stroke_inside_the_image(seed):
    mask = blob()
    prompt = synthesize_visual_prompts(mask, "scribble", np.random.default_rng(seed))
    assert prompt.shape == mask.shape and prompt.any()
    # a dilation by the radius-5 disk B is open under B: eroding (outside the image counts as
    # foreground, the stroke was clipped there) and dilating again gives the prompt back
    ndimage = pytest.importorskip("scipy.ndimage")
    footprint = disk((5, 5), 5, (11, 11))
    core = ndimage.binary_erosion(prompt, footprint, border_value=1)
    assert core.any()
    assert np.array_equal(ndimage.binary_dilation(core, footprint), prompt)
    cols = np.nonzero(prompt)[1]
    assert cols.max() - cols.min() >= 0.5 * 40
    assert prompt.sum() < mask.size  # a stroke, not a fill


def test_scribble_prompt_is_clipped_to_the_image():
    mask = rect(0, 0, 8, 64, shape=(12, 64))  # the sine (amplitude >= 10) leaves the image
    for seed in range(5):
        prompt = synthesize_visual_prompts(mask, "scribble", np.random.default_rng(seed))
        assert prompt.shape == (12, 64) and prompt.any()


def test_mask_prompt_stays_close_to_a_big_blob():
    mask = blob()
    prompt = synthesize_visual_prompts(mask, "mask", np.random.default_rng(0))
    iou = (prompt & mask).sum() / (prompt | mask).sum()
    assert iou > 0.8
    # the threshold (the blurred image's mean, 0.39 here) rounds the corners and grows the sides a little
    assert prompt[15:49, 15:49].all() and not prompt[:9].any() and not prompt[:, 55:].any()
    assert not prompt[12, 12] and prompt[11, 30] and prompt[30, 52]


def test_components_of_at_most_5_pixels_get_no_prompt():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:4, 2:4] = True  # 4 px
    mask[30, 30:35] = True  # 5 px
    for kind in ("point", "scribble", "box"):
        assert not synthesize_visual_prompts(mask, kind, np.random.default_rng(0)).any(), kind
    mask[10:20, 10:20] = True  # one big component joins: only it is prompted
    box = synthesize_visual_prompts(mask, "box", np.random.default_rng(0))
    assert not box[:5, :5].any() and not box[28:, 28:].any() and box[15, 15]
    points = synthesize_visual_prompts(mask, "point", np.random.default_rng(0))
    rows, cols = np.nonzero(points)
    center = (round(float(rows.mean())), round(float(cols.mean())))
    assert mask[center] and 10 <= center[0] < 20 and 10 <= center[1] < 20
    assert np.array_equal(points, disk(center, 10, mask.shape))  # one disk, for the big square only


def test_each_large_component_gets_its_own_point():
    mask = rect(15, 15, 35, 35, shape=(100, 100)) | rect(65, 65, 85, 85, shape=(100, 100))
    prompt = synthesize_visual_prompts(mask, "point", np.random.default_rng(1))
    assert prompt[:50, :50].sum() == prompt[50:, 50:].sum() == disk((50, 50), 10, (101, 101)).sum()


def test_synthesis_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown visual prompt kind"):
        synthesize_visual_prompts(blob(), "lasso", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        synthesize_visual_prompts(np.zeros((2, 3, 4)), "box", np.random.default_rng(0))


# ---------------------------------------------------------------------------------------- LLaVA
def test_llava_keeps_raw_turns_and_text_only_samples():
    image_sample, text_only = read_llava(LLAVA / "llava.json", LLAVA / "images")
    assert (image_sample.task, image_sample.image_id, image_sample.source) == (
        "chat",
        "000000033471",
        "llava",
    )
    assert image_sample.image_path == LLAVA / "images" / "coco" / "train2017" / "000000033471.jpg"
    assert image_sample.conversations[0] == {
        "from": "human",
        "value": "What are the colors of the bus in the image?\n<image>",
    }  # the placeholder stays where the data put it; the chat task moves it
    assert [t["from"] for t in image_sample.conversations] == ["human", "gpt", "human", "gpt"]
    assert text_only.image_path is None
    assert text_only.conversations[1]["value"] == "Red."


def test_llava_errors_name_the_file_entry_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "x1", "conversations": [{"from": "system", "value": "hi"}]}]))
    with pytest.raises(ValueError, match=r"bad\.json: entry 0 \(id 'x1'\): conversations\[0\]: unknown role"):
        read_llava(path, tmp_path)
    path.write_text(json.dumps([{"id": "x2", "image": "a.jpg"}]))
    with pytest.raises(ValueError, match="missing key 'conversations'"):
        read_llava(path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_llava(tmp_path / "nope.json", tmp_path)
