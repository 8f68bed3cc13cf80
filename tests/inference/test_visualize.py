"""Overlays: colours that stand out from the object under each mask, outlines on the boundary, labels
that stay apart and inside the image, captions with GCG phrases in their masks' colours."""

import itertools
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from xsam.inference.visualize import CANDIDATES, contact_sheet, label_boxes, mask_colours, overlay
from xsam.tasks.prediction import Prediction

GREY = (128, 128, 128)


def _image(height: int, width: int, colour=GREY) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = colour
    return image


def _prediction(masks, labels=None, scores=None, **fields) -> Prediction:
    masks = torch.as_tensor(np.asarray(masks, dtype=bool))
    labels = labels if labels is not None else [f"thing {i}" for i in range(len(masks))]
    scores = scores if scores is not None else [0.9] * len(masks)
    return Prediction(fields.pop("task", "generic"), masks, labels, scores, **fields)


def _box_mask(height: int, width: int, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _rgb_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


# ------------------------------------------------------------------------------------------ colours
@pytest.mark.parametrize(
    "object_colour",
    [(230, 30, 40), (40, 175, 70), (30, 110, 235), (250, 220, 10), (250, 250, 250), (5, 5, 5)],
)
def test_a_mask_colour_stands_out_from_the_object_under_it(object_colour):
    """A red object is not painted red (nor orange or pink): the colour is far from the object's."""
    image = _image(80, 100)
    image[20:60, 30:70] = object_colour
    prediction = _prediction([_box_mask(80, 100, 20, 60, 30, 70)])
    (colour,) = mask_colours(Image.fromarray(image), prediction)
    assert colour in CANDIDATES
    assert _rgb_distance(colour, object_colour) > 150, (colour, object_colour)


def test_the_bulk_of_a_two_coloured_object_decides_not_its_mean():
    """A mask over mostly-red with a little green: red's neighbours are out, not just the mean's."""
    image = _image(80, 100)
    image[20:60, 30:70] = (230, 30, 40)
    image[20:28, 30:70] = (40, 175, 70)
    (colour,) = mask_colours(Image.fromarray(image), _prediction([_box_mask(80, 100, 20, 60, 30, 70)]))
    assert _rgb_distance(colour, (230, 30, 40)) > 150


def test_touching_masks_get_well_separated_colours():
    """Three boxes side by side on one grey: each pair that touches gets clearly different colours."""
    image = _image(80, 120)
    masks = [_box_mask(80, 120, 10, 70, 10 + 30 * i, 40 + 30 * i) for i in range(3)]
    colours = mask_colours(Image.fromarray(image), _prediction(masks))
    assert len(set(colours)) == 3
    for a, b in itertools.pairwise(colours):
        assert _rgb_distance(a, b) > 150, colours


def test_colours_are_deterministic_and_are_the_ones_drawn():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    masks = [_box_mask(60, 90, 5, 30, 5, 40), _box_mask(60, 90, 25, 55, 30, 85), np.zeros((60, 90), bool)]
    prediction = _prediction(masks)
    colours = mask_colours(image, prediction)
    assert colours == mask_colours(image, _prediction(masks)) and len(colours) == 3
    drawn = np.asarray(overlay(image, prediction, labels=False), dtype=np.int64)
    original = np.asarray(image, dtype=np.int64)
    y, x = 10, 10  # well inside the first mask only
    np.testing.assert_array_equal(drawn[y, x], (original[y, x] * 128 + np.array(colours[0]) * 128) >> 8)
    np.testing.assert_array_equal(overlay(image, prediction), overlay(image, _prediction(masks)))


# ----------------------------------------------------------------------------------- fill, outline
def test_the_outline_runs_on_the_boundary_and_the_inside_keeps_the_blend():
    image = _image(100, 120)
    mask = _box_mask(100, 120, 20, 60, 30, 80)
    prediction = _prediction([mask])
    (colour,) = mask_colours(Image.fromarray(image), prediction)
    drawn = np.asarray(overlay(Image.fromarray(image), prediction, labels=False))
    blend = (np.array(GREY) * 128 + np.array(colour) * 128) >> 8
    ring = np.concatenate([drawn[20, 30:80], drawn[59, 30:80], drawn[20:60, 30], drawn[20:60, 79]])
    assert (ring == ring[0]).all(), "one outline colour all round"
    assert _rgb_distance(ring[0], blend) > 20 and np.abs(ring[0].astype(int) - colour).max() <= 90
    assert (drawn[21:59, 31:79] == blend).all(), "inside the 1-px outline: the blended fill"
    outside = np.ones((100, 120), bool)
    outside[20:60, 30:80] = False
    assert (drawn[outside] == GREY).all(), "nothing drawn outside the mask"


def test_the_image_border_is_not_outlined_and_thick_outlines_grow_with_the_image():
    image = _image(1200, 1200)
    mask = _box_mask(1200, 1200, 0, 1200, 0, 600)  # the left half, touching three image borders
    prediction = _prediction([mask])
    (colour,) = mask_colours(Image.fromarray(image), prediction)
    drawn = np.asarray(overlay(Image.fromarray(image), prediction, labels=False))
    blend = (np.array(GREY) * 128 + np.array(colour) * 128) >> 8
    assert (drawn[:, 0] == blend).all() and (drawn[0, :590] == blend).all()
    edge = drawn[600, 595:600]
    assert (edge[-3:] == edge[-1]).all() and not (edge[-1] == blend).all(), "3 px outline inside the mask"
    assert (edge[:2] == blend).all()


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_sets_the_fill_weight(alpha):
    image = _image(50, 60)
    prediction = _prediction([_box_mask(50, 60, 10, 40, 10, 50)])
    (colour,) = mask_colours(Image.fromarray(image), prediction)
    drawn = np.asarray(overlay(Image.fromarray(image), prediction, alpha=alpha, labels=False))
    assert tuple(drawn[25, 30]) == (colour if alpha == 1.0 else GREY)
    with pytest.raises(ValueError, match="alpha"):
        overlay(Image.fromarray(image), prediction, alpha=1.5)


# ------------------------------------------------------------------------------------------ labels
def _boxes_apart(boxes) -> bool:
    return all(
        a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        for a, b in itertools.combinations(boxes, 2)
    )


def test_labels_never_overlap_and_stay_inside_the_image():
    """Twelve small masks crowded into one corner: every label finds a free place in the image."""
    rng = np.random.default_rng(3)
    masks = []
    for _ in range(12):
        top, left = rng.integers(0, 40, size=2)
        masks.append(_box_mask(200, 300, top, top + 8, left, left + 8))
    labels = label_boxes(_prediction(masks, labels=[f"a rather long label {i}" for i in range(12)]))
    assert [label.mask for label in labels] == list(range(12))
    assert _boxes_apart([label.box for label in labels])
    for label in labels:
        x0, y0, x1, y1 = label.box
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        assert not label.inside, "an 8 px mask cannot hold its label"


def test_a_label_sits_inside_a_mask_that_can_hold_it_near_its_middle():
    mask = np.zeros((300, 400), bool)
    mask[50:250, 100:300] = True
    mask[120:180, 150:250] = False  # a hole where the centroid is: the label must avoid it
    (label,) = label_boxes(_prediction([mask], labels=["ring"], scores=[0.5]))
    x0, y0, x1, y1 = label.box
    assert label.inside and mask[y0:y1, x0:x1].all()
    assert abs((y0 + y1) / 2 - 150) < 100 and abs((x0 + x1) / 2 - 200) < 100


def test_a_label_that_does_not_fit_goes_beside_its_mask():
    mask = _box_mask(200, 300, 100, 106, 140, 146)
    (label,) = label_boxes(_prediction([mask], labels=["tiny"]))
    x0, y0, x1, y1 = label.box
    assert not label.inside and not mask[y0:y1, x0:x1].any()
    assert y1 <= 100 and x0 <= 146 and x1 >= 140, "directly above the mask"


def test_scores_toggle_the_label_text():
    masks = [_box_mask(120, 160, 10, 110, 10, 150)]
    prediction = _prediction(masks, labels=["dog"], scores=[0.934])
    assert [label.text for label in label_boxes(prediction)] == ["dog 0.93"]
    assert [label.text for label in label_boxes(prediction, scores=False)] == ["dog"]
    image = Image.fromarray(_image(120, 160))
    assert not np.array_equal(overlay(image, prediction), overlay(image, prediction, scores=False))


def test_long_labels_are_cut_to_the_image_width():
    mask = _box_mask(60, 100, 10, 50, 10, 90)
    (label,) = label_boxes(_prediction([mask], labels=["the shape that looks like a honeycomb cell"]))
    assert label.text.endswith("…") and label.box[2] <= 100


# ---------------------------------------------------------------------------------- odd predictions
def test_masks_of_another_size_are_refused():
    prediction = _prediction([np.ones((40, 50), bool)])
    image = Image.fromarray(_image(40, 60))
    with pytest.raises(ValueError, match="masks are"):
        overlay(image, prediction)
    with pytest.raises(ValueError, match="masks are"):
        mask_colours(image, prediction)


def test_no_masks_and_empty_masks_leave_the_image_as_it_is():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    for masks in (np.zeros((0, 30, 40), bool), np.zeros((2, 30, 40), bool)):
        prediction = _prediction(masks)
        assert len(mask_colours(image, prediction)) == len(masks)
        assert label_boxes(prediction) == []
        np.testing.assert_array_equal(np.asarray(overlay(image, prediction)), np.asarray(image))


def test_a_tiny_image_gets_masks_without_labels():
    prediction = _prediction([np.ones((6, 8), bool)])
    assert label_boxes(prediction) == []
    assert overlay(Image.fromarray(_image(6, 8)), prediction).size == (8, 6)


def test_without_freetype_the_bitmap_font_draws_any_text(monkeypatch):
    """Pillow without FreeType (or before 10.1) has only a Latin-1 bitmap font: labels, titles and
    captions outside Latin-1 still draw (as ``?``) instead of raising."""
    from PIL import ImageFont

    from xsam.inference import visualize

    def bitmap_only(size=None):
        if size is not None:
            raise OSError("The _imagingft C module is not installed")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", bitmap_only)
    visualize._font.cache_clear()
    try:
        masks = [_box_mask(100, 120, 10, 90, 10, 110)]
        prediction = _prediction(masks, labels=["狗 dog"], task="gcg", phrases=["狗 dog"], text="a 狗 dog …")
        drawn = overlay(Image.fromarray(_image(100, 120)), prediction)
        assert drawn.width == 120 and drawn.height > 100
        assert label_boxes(prediction)[0].text == "? dog 0.90"
        assert contact_sheet([("狗 " * 40, drawn)]).width == 256
    finally:
        visualize._font.cache_clear()


# ----------------------------------------------------------------------------------------- captions
def test_gcg_caption_marks_each_phrase_in_its_mask_colour():
    image = Image.fromarray(_image(200, 300))
    masks = [_box_mask(200, 300, 20, 100, 20, 120), _box_mask(200, 300, 110, 190, 150, 290)]
    phrases = ["A dog", "the grass"]
    prediction = _prediction(
        masks, labels=phrases, task="gcg", phrases=phrases, text="A dog runs on the grass ."
    )
    colours = mask_colours(image, prediction)
    drawn = np.asarray(overlay(image, prediction))
    assert drawn.shape[0] > 200 and drawn.shape[1] == 300
    caption = drawn[200:]
    for colour in colours:
        assert (caption == colour).all(axis=-1).sum() > 50, f"no highlight in {colour}"
    plain = np.asarray(overlay(image, _prediction(masks, labels=phrases, task="chat", text="A dog runs.")))
    assert not any((plain[200:] == colour).all(axis=-1).any() for colour in colours)
    assert np.asarray(overlay(image, prediction, caption=False)).shape[0] == 200


def test_long_captions_wrap_within_the_image_width():
    image = Image.fromarray(_image(100, 160))
    text = " ".join(["word"] * 40)
    drawn = np.asarray(overlay(image, _prediction(np.zeros((0, 100, 160), bool), task="chat", text=text)))
    assert drawn.shape[1] == 160 and drawn.shape[0] > 100 + 4 * 12
    assert (drawn[100:, -2:] == 255).all(), "no text runs off the right edge"


# ------------------------------------------------------------------------------------ contact sheet
def test_contact_sheet_tiles_panels_under_titles():
    panels = [
        (f"panel {i}: " + "a long title " * i, Image.new("RGB", (128, 96), (200, 0, 0))) for i in range(5)
    ]
    sheet = contact_sheet(panels, columns=3, width=128)
    assert sheet.width == 3 * 128 and sheet.height > 2 * 96
    pixels = np.asarray(sheet)
    assert (pixels[:10] != 255).any(), "a title in the first row"
    with pytest.raises(ValueError):
        contact_sheet([])


# ------------------------------------------------------------------------------------- big images
def test_a_big_image_takes_about_one_copy_of_its_pixels():
    """3000 x 3000 with a full-height mask: the traced scratch memory stays near one image copy (the
    drawing array), not one per mask or a float copy."""
    size = 3000
    image = Image.new("RGB", (size, size), GREY)
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, :, : size // 2] = True
    masks[1, 1000:1400, 2000:2600] = True
    prediction = Prediction("generic", masks, ["left", "block"], [0.8, 0.7])
    tracemalloc.start()
    drawn = overlay(image, prediction)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert drawn.size == (size, size)
    assert peak < 1.5 * size * size * 3, f"peak {peak / 1e6:.0f} MB"


# ------------------------------------------------------------------------------------------------ cli
def test_predict_no_scores_reaches_the_overlay(tmp_path, monkeypatch, tiny_model, tokenizer):
    """``xsam predict --no-scores`` draws labels without scores (and with them by default)."""
    from xsam import cli
    from xsam.inference import visualize

    model = tmp_path / "model"
    tiny_model.tokenizer = tokenizer
    try:
        tiny_model.save_pretrained(model)
    finally:
        tiny_model.tokenizer = None
    Image.fromarray(_image(40, 50)).save(tmp_path / "photo.png")
    calls = []

    def recording(image, prediction, **options):
        calls.append(options)
        return overlay(image, prediction, **options)

    monkeypatch.setattr(visualize, "overlay", recording)
    arguments = [
        "predict",
        "--model",
        str(model),
        "--image",
        str(tmp_path / "photo.png"),
        "--task",
        "referring",
    ]
    arguments += ["--text", "the dog", "--out", str(tmp_path / "out")]
    assert cli.main(arguments) == 0 and cli.main([*arguments, "--no-scores"]) == 0
    assert [call.get("scores") for call in calls] == [True, False]
