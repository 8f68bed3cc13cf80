"""Sample building per task and batching: prompt structure, cond/seg ids, targets on the SAM canvas,
label offsets of the in-batch contrastive layout, text-length handling and the stage-1 scale jitter."""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytest
import torch
from PIL import Image

from xsam.config import XSamConfig
from xsam.data.collate import collate
from xsam.data.samples import SampleOptions, SampleTooLongError, build_sample, scale_jitter, text_max_length
from xsam.losses.criterion import SegmentationCriterion
from xsam.modeling.xsam import XSamModel
from xsam.processing import box_mask, point_mask
from xsam.tasks import Task
from xsam.tasks.generic import sample_categories
from xsam.tasks.records import Expression, Mask, Phrase, Record, Segment
from xsam.tokens import IGNORE_INDEX

CONFIG = XSamConfig.tiny()
CANVAS = CONFIG.segmentation_encoder.image_size  # 128
HEIGHT, WIDTH = 40, 64  # SAM scale 2: scaled size (80, 128), every mask pixel becomes a 2x2 block
IMAGE_ID, REGION_ID = CONFIG.tokens.image_token_index, CONFIG.tokens.region_token_index
SEG_ID = CONFIG.tokens.seg_token_id


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _on_canvas(mask: np.ndarray) -> torch.Tensor:
    """Expected SAM-canvas mask: NEAREST x2 is an exact 2x2 block copy, then zero padding."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=bool)
    canvas[: 2 * HEIGHT, : 2 * WIDTH] = np.kron(mask, np.ones((2, 2), dtype=bool))
    return torch.from_numpy(canvas)


@pytest.fixture
def image_path(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def _record(task: str, image_path, **fields) -> Record:
    return Record(
        task=task, image_path=image_path, height=HEIGHT, width=WIDTH, image_id=7, source=task, **fields
    )


def _build(record, tokenizer, *, seed=0, train=True, **options):
    return build_sample(
        record, CONFIG, tokenizer, random.Random(seed), train=train, options=SampleOptions(**options)
    )


def _text(tokenizer, sample) -> str:
    """Decoded prompt without whitespace (decoding re-inserts SentencePiece spaces around tags)."""
    return "".join(tokenizer.decode([max(i, 0) for i in sample.input_ids.tolist()]).split())


def _check_ids(sample, *, conditions: int, segs: int):
    assert sample.input_ids.dtype == torch.long and sample.input_ids.dim() == 1
    assert sample.cond_ids.shape == sample.seg_ids.shape == sample.labels.shape == sample.input_ids.shape
    assert sample.num_conditions == conditions
    assert int((sample.seg_ids >= 0).sum()) == segs
    assert torch.equal(sample.input_ids == SEG_ID, sample.seg_ids >= 0)
    assert int((sample.input_ids == IMAGE_ID).sum()) == (sample.pixel_values is not None)
    # every <SEG> is an answer token (trained with loss)
    assert torch.all(sample.labels[sample.seg_ids >= 0] == SEG_ID)


# ------------------------------------------------------------------------------------------ generic
CATEGORIES = [("person", True), ("wall-other-merged", False), ("car", True), ("sky-other-merged", False)]


def _generic_record(image_path) -> Record:
    segments = [
        Segment(Mask.from_array(_box(0, 0, 10, 10)), "person", 1),
        Segment(Mask.from_array(_box(0, 20, 10, 30)), "person", 1),
        Segment(Mask.from_array(_box(20, 0, 30, 20)), "wall-other-merged", 2, is_thing=False),
        Segment(Mask.from_array(_box(30, 40, 40, 64)), "wall-other-merged", 2, is_thing=False),
        Segment(Mask.from_array(_box(12, 40, 20, 50)), "car", 3, iscrowd=True),
    ]
    return _record("generic", image_path, segments=segments, categories=CATEGORIES)


def test_generic_eval_lists_all_categories_in_id_order_and_merges_stuff(tokenizer, image_path):
    sample = _build(_generic_record(image_path), tokenizer, train=False)
    assert sample.task == Task.GENERIC and not sample.decode_per_seg
    assert sample.meta["class_names"] == [name for name, _ in CATEGORIES]
    assert "<p>person</p>,<p>wall</p>,<p>car</p>,<p>sky</p>" in _text(tokenizer, sample)
    _check_ids(sample, conditions=4, segs=1)
    (target,) = sample.targets
    # two person instances apart, the two wall segments merged, the crowd car dropped
    assert target.labels.tolist() == [0, 0, 1]
    assert target.masks.dtype == torch.bool and target.masks.shape == (3, CANVAS, CANVAS)
    assert torch.equal(target.masks[0], _on_canvas(_box(0, 0, 10, 10)))
    assert torch.equal(target.masks[2], _on_canvas(_box(20, 0, 30, 20) | _box(30, 40, 40, 64)))
    assert target.ignore_masks is None
    assert sample.pixel_values.shape == (3, 56, 56) and sample.sam_pixel_values.shape == (3, CANVAS, CANVAS)
    assert sample.meta["scaled_size"] == (80, 128) and sample.meta["original_size"] == (HEIGHT, WIDTH)
    assert torch.all(sample.sam_pixel_values[:, 80:] == 0)


def test_generic_training_labels_follow_the_sampled_order(tokenizer, image_path):
    orders = set()
    for seed in range(12):
        sample = _build(_generic_record(image_path), tokenizer, seed=seed)
        names = sample.meta["class_names"]
        orders.add(tuple(names))
        assert {"person", "wall-other-merged"} <= set(names) and set(names) <= {n for n, _ in CATEGORIES}
        _check_ids(sample, conditions=len(names), segs=1)
        (target,) = sample.targets
        person, wall = names.index("person"), names.index("wall-other-merged")
        assert target.labels.tolist() == [person, person, wall]
    assert len(orders) > 1  # the order is random


def test_closed_set_training_labels_are_dataset_class_positions(tokenizer, image_path):
    # Stage 1's closed-set head has one output per dataset class: a label must name the same class in
    # every sample, whatever the rng draws (a shuffled prompt order would make the labels noise).
    for seed in range(6):
        sample = _build(_generic_record(image_path), tokenizer, seed=seed, closed_set=True)
        assert sample.meta["class_names"] == [name for name, _ in CATEGORIES]
        (target,) = sample.targets
        assert target.labels.tolist() == [0, 0, 1]


def test_closed_set_rejects_records_it_cannot_label(tokenizer, image_path):
    unlisted = _generic_record(image_path)
    unlisted.categories = []
    with pytest.raises(ValueError, match="class list"):
        _build(unlisted, tokenizer, closed_set=True)
    referring = _record(
        "referring", image_path, expressions=[Expression("the box", [Mask.from_array(_box(0, 0, 5, 5))])]
    )
    with pytest.raises(ValueError, match="generic segmentation records"):
        _build(referring, tokenizer, closed_set=True)


def test_sample_categories_follows_the_official_rule():
    names = [f"c{i}" for i in range(20)]
    positives = ["c3", "c7"]
    sizes = []
    for seed in range(200):
        chosen = sample_categories(names, positives, random.Random(seed), num_class=2)
        assert set(positives) <= set(chosen) and len(set(chosen)) == len(chosen)
        sizes.append(len(chosen))
    # num_class = #positives: the non-full branch adds randint(0, 0) = 0 negatives
    assert set(sizes) == {2, 20} and 60 < sizes.count(20) < 140
    everything = sample_categories(names, positives, random.Random(1), num_class=10000)
    assert len(everything) >= 2 and set(positives) <= set(everything)


# ---------------------------------------------------------------------------------------- referring
def test_referring_is_multi_turn_with_one_target_per_seg(tokenizer, image_path):
    expressions = [
        Expression(
            "The Left Man", [Mask.from_array(_box(0, 0, 10, 10)), Mask.from_array(_box(0, 12, 5, 16))]
        ),
        Expression("a red car", [Mask.from_array(_box(20, 20, 30, 40))]),
    ]
    sample = _build(_record("refseg", image_path, expressions=expressions), tokenizer)
    assert sample.task == Task.REFERRING and sample.decode_per_seg
    text = _text(tokenizer, sample)
    assert "<p>theleftman</p>" in text and "<p>aredcar</p>" in text and text.count("<|user|>") == 2
    _check_ids(sample, conditions=2, segs=2)
    assert [t.labels.tolist() for t in sample.targets] == [[0], [1]]
    assert torch.equal(sample.targets[0].masks[0], _on_canvas(_box(0, 0, 10, 10) | _box(0, 12, 5, 16)))
    assert torch.equal(sample.targets[1].masks[0], _on_canvas(_box(20, 20, 30, 40)))
    # the first <SEG> answers the first turn: it comes after the first phrase and before the second
    first_seg = int((sample.seg_ids == 0).nonzero())
    assert (sample.cond_ids[:first_seg] == 0).any() and not (sample.cond_ids[:first_seg] == 1).any()


def test_reasoning_carries_ignore_masks_and_one_image_placeholder(tokenizer, image_path):
    expressions = [
        Expression("What can be used to sit on?", [Mask.from_array(_box(0, 0, 10, 10))], is_sentence=True),
        Expression("the lamp", [Mask.from_array(_box(10, 10, 20, 20))], explanation="It gives light."),
    ]
    ignore = _box(30, 0, 40, 8)
    record = _record("reasoning", image_path, expressions=expressions, ignore_mask=Mask.from_array(ignore))
    for seed in range(4):
        sample = _build(record, tokenizer, seed=seed)
        _check_ids(sample, conditions=2, segs=2)
        assert len(sample.targets) == 2
        for index, target in enumerate(sample.targets):
            assert target.labels.tolist() == [index]
            assert torch.equal(target.ignore_masks[0], _on_canvas(ignore))
    assert "<p>Whatcanbeusedtositon?</p>" in _text(tokenizer, sample)


def test_too_long_referring_drops_trailing_turns_and_generic_raises(tokenizer, image_path):
    expressions = [
        Expression(f"object number {i}", [Mask.from_array(_box(i, i, i + 5, i + 5))]) for i in range(6)
    ]
    record = _record("referring", image_path, expressions=expressions)
    full = _build(record, tokenizer, train=False)
    short = _build(record, tokenizer, train=False, max_length=len(full.input_ids) - 1)
    assert len(short.input_ids) <= len(full.input_ids) - 1
    assert 1 <= len(short.targets) < 6 and short.num_conditions == len(short.targets)
    assert int((short.seg_ids >= 0).sum()) == len(short.targets)
    assert short.meta["class_names"] == [e.text for e in expressions][: len(short.targets)]
    generic = _generic_record(image_path)
    seg_position = int((_build(generic, tokenizer, train=False).seg_ids == 0).nonzero())
    with pytest.raises(SampleTooLongError, match="max_length"):
        _build(generic, tokenizer, train=False, max_length=seg_position)
    kept = _build(generic, tokenizer, train=False, max_length=seg_position + 1)  # cuts after the <SEG>
    assert len(kept.input_ids) == seg_position + 1 and kept.seg_ids[-1] == 0


def test_text_max_length_matches_the_release():
    assert text_max_length(XSamConfig.official()) == 2319
    assert text_max_length(CONFIG) == 512 - 16 - 16


# ---------------------------------------------------------------------------------------------- GCG
def test_gcg_has_one_seg_and_one_mask_per_phrase(tokenizer, image_path):
    caption = "A man rides a horse on the beach."
    phrases = [  # given out of order: class order is caption order
        Phrase(12, 19, [Mask.from_array(_box(10, 10, 30, 40))]),
        Phrase(0, 5, [Mask.from_array(_box(0, 0, 10, 10)), Mask.from_array(_box(0, 50, 4, 60))]),
    ]
    sample = _build(_record("gcg", image_path, caption=caption, phrases=phrases), tokenizer, train=False)
    assert "<p>Aman</p>rides<p>ahorse</p>onthebeach" in _text(tokenizer, sample)
    assert sample.meta["class_names"] == ["A man", "a horse"]
    _check_ids(sample, conditions=2, segs=1)
    (target,) = sample.targets
    assert target.labels.tolist() == [0, 1]
    assert torch.equal(target.masks[0], _on_canvas(_box(0, 0, 10, 10) | _box(0, 50, 4, 60)))
    assert torch.equal(target.masks[1], _on_canvas(_box(10, 10, 30, 40)))


# ------------------------------------------------------------------------------------ visual prompts
def _prompted(mask: np.ndarray, category: str, *, crowd: bool = False) -> Segment:
    rows, cols = np.nonzero(mask)
    centre = np.array([[cols.mean(), rows.mean()]])
    box = (cols.min(), rows.min(), cols.max(), rows.max())
    prompts = {
        "point": Mask.from_array(point_mask(centre, (HEIGHT, WIDTH), radius=1)),
        "box": Mask.from_array(box_mask(box, (HEIGHT, WIDTH))),
        "scribble": Mask.from_array(np.zeros((HEIGHT, WIDTH), dtype=bool)),  # empty: never chosen
    }
    return Segment(Mask.from_array(mask), category, iscrowd=crowd, visual_prompts=prompts)


def _vgd_record(image_path) -> Record:
    segments = [
        _prompted(_box(0, 0, 10, 10), "dog"),
        _prompted(_box(0, 30, 10, 40), "dog"),
        _prompted(_box(20, 20, 30, 30), "cat"),
        _prompted(_box(30, 50, 40, 60), "bird", crowd=True),
    ]
    categories = [("dog", True), ("cat", True), ("bird", True), ("fish", True), ("cow", True)]
    return _record("vgd", image_path, segments=segments, categories=categories)


def _is_prompt_of(region: torch.Tensor, segment: Segment) -> bool:
    return any(torch.equal(region, _on_canvas(p.decode())) for p in segment.visual_prompts.values())


def test_vgd_prompts_each_category_with_one_own_instance(tokenizer, image_path):
    record = _vgd_record(image_path)
    for seed in range(6):
        sample = _build(record, tokenizer, seed=seed, vgd_negative_probability=0.0)
        names = sample.meta["class_names"]
        assert sorted(names) == ["cat", "dog"]  # the crowd bird is neither prompt nor target
        _check_ids(sample, conditions=2, segs=1)
        assert int((sample.input_ids == REGION_ID).sum()) == 2
        assert sample.region_masks.shape == (2, CANVAS, CANVAS) and sample.region_masks.dtype == torch.bool
        for region, name in zip(sample.region_masks, names, strict=True):
            owners = [s for s in record.segments if s.category == name]
            assert region.any() and any(_is_prompt_of(region, s) for s in owners)
        (target,) = sample.targets
        assert target.labels.tolist() == [names.index("dog")] * 2 + [names.index("cat")]
        assert torch.equal(target.masks[2], _on_canvas(_box(20, 20, 30, 30)))


def test_vgd_negatives_get_empty_regions_and_no_targets(tokenizer, image_path):
    sample = _build(_vgd_record(image_path), tokenizer, seed=3, vgd_negative_probability=1.0)
    names = sample.meta["class_names"]
    negatives = [i for i, name in enumerate(names) if name not in ("dog", "cat")]
    assert 1 <= len(negatives) <= 3 and all(names[i] in ("bird", "fish", "cow") for i in negatives)
    assert sample.region_masks.shape[0] == len(names) == sample.num_conditions
    for i in negatives:
        assert not sample.region_masks[i].any()
        assert i not in sample.targets[0].labels.tolist()


def test_vgd_eval_uses_the_fixed_prompt_type(tokenizer, image_path):
    record = _vgd_record(image_path)
    sample = _build(record, tokenizer, train=False, visual_prompt_type="box")
    assert sample.meta["class_names"] == ["dog", "cat"]
    expected = _on_canvas(record.segments[2].visual_prompts["box"].decode())
    assert torch.equal(sample.region_masks[1], expected)
    with pytest.raises(ValueError, match="no instance with a non-empty visual prompt"):
        _build(record, tokenizer, train=False, visual_prompt_type="scribble")


def test_interactive_has_one_region_and_its_instance_as_target(tokenizer, image_path):
    record = _vgd_record(image_path)
    record.task = "interactive"
    sample = _build(record, tokenizer, train=False, visual_prompt_type="point")
    _check_ids(sample, conditions=1, segs=1)
    assert sample.region_masks.shape == (1, CANVAS, CANVAS)
    assert torch.equal(
        sample.region_masks[0], _on_canvas(record.segments[0].visual_prompts["point"].decode())
    )
    (target,) = sample.targets
    assert target.labels.tolist() == [0] and torch.equal(target.masks[0], _on_canvas(_box(0, 0, 10, 10)))


# --------------------------------------------------------------------------------------------- chat
LLAVA = [
    {"from": "human", "value": "What is shown?\n<image>"},
    {"from": "gpt", "value": "A cat."},
    {"from": "human", "value": "What colour?"},
    {"from": "gpt", "value": "Black."},
]


def test_chat_with_and_without_image(tokenizer, image_path):
    with_image = _build(_record("chat", image_path, conversations=LLAVA), tokenizer)
    assert with_image.targets == [] and with_image.region_masks is None
    _check_ids(with_image, conditions=0, segs=0)
    assert with_image.input_ids.tolist().index(IMAGE_ID) <= 3  # moved to the start of the first question
    answers = tokenizer.decode(with_image.labels[with_image.labels != IGNORE_INDEX].tolist())
    assert "A cat." in answers and "Black." in answers and "What colour" not in answers
    text_only = [dict(m, value=m["value"].replace("\n<image>", "")) for m in LLAVA]
    record = Record(task="chat", image_path=None, height=0, width=0, source="text", conversations=text_only)
    plain = _build(record, tokenizer)
    assert plain.pixel_values is None and plain.sam_pixel_values is None
    assert IMAGE_ID not in plain.input_ids.tolist()
    batch = collate([plain, plain], pad_token_id=tokenizer.pad_token_id)
    assert batch.pixel_values is None and batch.sam_pixel_values is None and batch.targets == []
    mixed = collate([with_image, plain], pad_token_id=0)
    assert torch.all(mixed.pixel_values[1] == 0) and torch.equal(
        mixed.pixel_values[0], with_image.pixel_values
    )


def test_chat_record_without_stated_size_takes_the_images(tokenizer, image_path):
    """LLaVA's JSON has no image sizes: the reader leaves 0 x 0 and the image file decides."""
    record = Record(
        task="chat", image_path=image_path, height=0, width=0, source="llava", conversations=LLAVA
    )
    sample = _build(record, tokenizer)
    with Image.open(image_path) as image:
        assert sample.meta["original_size"] == (image.height, image.width)


def test_chat_truncates_freely(tokenizer, image_path):
    sample = _build(_record("chat", image_path, conversations=LLAVA), tokenizer, max_length=12)
    assert len(sample.input_ids) == 12


# -------------------------------------------------------------------------------------------- collate
def _referring_samples(tokenizer, image_path):
    one = [Expression("the dog", [Mask.from_array(_box(0, 0, 10, 10))])]
    two = [
        Expression("the cat", [Mask.from_array(_box(10, 10, 20, 20))]),
        Expression("the big tree on the left side", [Mask.from_array(_box(20, 0, 40, 20))]),
    ]
    return [
        _build(_record("referring", image_path, expressions=two), tokenizer, seed=1),
        _build(_record("referring", image_path, expressions=one), tokenizer, seed=2),
    ]


def test_collate_pads_and_offsets_per_seg_labels(tokenizer, image_path):
    samples = _referring_samples(tokenizer, image_path)
    batch = collate(samples, pad_token_id=tokenizer.pad_token_id)
    lengths = [len(s.input_ids) for s in samples]
    assert batch.input_ids.shape == (2, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    short = int(np.argmin(lengths))
    pad = batch.attention_mask[short] == 0
    assert torch.all(batch.input_ids[short][pad] == tokenizer.pad_token_id)
    assert torch.all(batch.labels[short][pad] == IGNORE_INDEX)
    assert torch.all(batch.cond_ids[short][pad] == -1) and torch.all(batch.seg_ids[short][pad] == -1)
    assert [t.labels.tolist() for t in batch.targets] == [[0], [1], [2]]  # sample 1's label 0 -> 2
    assert [s.targets[0].labels.tolist() for s in samples] == [[0], [0]]  # samples left unchanged
    assert batch.pixel_values.shape == (2, 3, 56, 56) and batch.region_masks is None
    assert batch.task == Task.REFERRING and batch.source == "referring" and batch.decode_per_seg
    forward = inspect.signature(XSamModel.forward).parameters
    assert set(batch.model_inputs()) <= set(forward)
    moved = batch.to("cpu")
    assert moved.targets[2].labels.tolist() == [2]


def test_collate_rejects_mixed_tasks(tokenizer, image_path):
    referring_sample = _referring_samples(tokenizer, image_path)[0]
    generic_sample = _build(_generic_record(image_path), tokenizer)
    with pytest.raises(ValueError, match=r"one task.*generic.*referring"):
        collate([referring_sample, generic_sample], pad_token_id=0)


def test_batches_run_through_the_tiny_model_and_loss(tokenizer, image_path):
    """Labels must index the class columns the model builds, in the order it emits decoder samples."""
    torch.manual_seed(0)
    model = XSamModel(CONFIG).eval()
    criterion = SegmentationCriterion(num_points=64)
    vgd = [_build(_vgd_record(image_path), tokenizer, seed=s, vgd_negative_probability=1.0) for s in (0, 1)]
    for samples in (_referring_samples(tokenizer, image_path), vgd):
        batch = collate(samples, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            output = model(**batch.model_inputs())
        seg = output.segmentation
        assert seg.class_logits.shape[1] == len(batch.targets)
        for target, mask in zip(batch.targets, seg.condition_mask, strict=True):
            assert bool(mask[target.labels].all())  # every label is a real (unpadded) class column
        losses = criterion(seg.class_logits, seg.mask_logits, batch.targets)
        assert torch.isfinite(losses["loss_seg"])


# ---------------------------------------------------------------------------------------- scale jitter
def _stripes() -> tuple[Image.Image, np.ndarray]:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[:, ::8] = True
    mask[::5, :] = True
    return Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB"), mask[None]


@pytest.mark.parametrize(("scale", "expected"), [(1.0, (80, 128)), (0.5, (40, 64)), (0.1, (8, 13))])
def test_scale_jitter_resizes_keeping_aspect(scale, expected):
    image, masks = _stripes()
    out, out_masks = scale_jitter(
        image, masks, random.Random(0), target_size=CANVAS, scale_range=(scale, scale)
    )
    assert (out.height, out.width) == expected and out_masks.shape == (1, *expected)
    reference = Image.fromarray(masks[0].astype(np.uint8)).resize(expected[::-1], Image.Resampling.NEAREST)
    assert np.array_equal(out_masks[0], np.array(reference).astype(bool))


def test_scale_jitter_centre_crops_and_keeps_masks_aligned():
    image, masks = _stripes()
    out, out_masks = scale_jitter(image, masks, random.Random(0), target_size=CANVAS, scale_range=(2.0, 2.0))
    # 4x the original: 160 x 256, cropped to 128 x 128 around the centre (rows 16.., cols 64..)
    assert (out.height, out.width) == (128, 128)
    full = np.kron(masks[0], np.ones((4, 4), dtype=bool))
    assert np.array_equal(out_masks[0], full[16:144, 64:192])
    # image and mask went through the same geometry (NEAREST image at integer scale = mask exactly)
    exact, _ = scale_jitter(
        image, masks, random.Random(0), target_size=CANVAS, scale_range=(2.0, 2.0), resample=0
    )
    assert np.array_equal(np.array(exact)[..., 0] > 127, out_masks[0])
    draws = {scale_jitter(image, masks, random.Random(s), target_size=CANVAS)[0].size for s in range(5)}
    assert len(draws) > 1 and all(max(size) <= CANVAS for size in draws)


def test_build_sample_with_scale_jitter_keeps_targets_on_the_image(tokenizer, image_path):
    sample = _build(_generic_record(image_path), tokenizer, train=True, scale_range=(0.5, 0.5))
    assert sample.meta["scaled_size"] == (40, 64)
    assert torch.all(sample.sam_pixel_values[:, 40:] == 0) and torch.all(
        sample.sam_pixel_values[:, :, 64:] == 0
    )
    (target,) = sample.targets
    assert target.masks.shape == (3, CANVAS, CANVAS) and not target.masks[:, 40:].any()
    expected = np.zeros((CANVAS, CANVAS), dtype=bool)
    expected[:10, :10] = True  # person box (0..10, 0..10) at scale 1
    assert torch.equal(target.masks[0], torch.from_numpy(expected))
