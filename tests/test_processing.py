"""Unit tests for ``xsam.processing`` (no fixtures; parity is in test_transforms_parity.py)."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from xsam.config import ImageEncoderConfig, SegmentationEncoderConfig
from xsam.processing import (
    Frame,
    SamInput,
    box_mask,
    expand_to_square,
    load_image,
    mean_fill_colour,
    point_mask,
    postprocess_masks,
    preprocess_mask,
    preprocess_masks,
    preprocess_sam,
    preprocess_siglip,
    resize_image,
    sam_scaled_size,
    scribble_mask,
    siglip_pixels_uint8,
)

SAM_SMALL = SegmentationEncoderConfig(image_size=128)
SIGLIP_SMALL = ImageEncoderConfig(image_size=56)


def _constant_image(height: int, width: int, colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def _normalised(colour: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (torch.tensor(colour, dtype=torch.float64) / 255 - torch.tensor(mean)) / torch.tensor(std)


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    ("original", "longest", "expected"),
    [
        ((512, 360), 1024, (1024, 720)),
        ((400, 600), 1024, (683, 1024)),  # 682.67 rounds up
        ((300, 300), 1024, (1024, 1024)),
        ((50, 30), 128, (128, 77)),  # 76.8 rounds up
        ((1000, 3), 1024, (1024, 3)),  # 3.07 rounds down
    ],
)
def test_sam_scaled_size_rounds_half_up(original, longest, expected):
    assert sam_scaled_size(original, longest) == expected


def test_sam_scaled_size_rejects_empty_image():
    with pytest.raises(ValueError, match="positive"):
        sam_scaled_size((0, 10), 1024)


# -------------------------------------------------------------------------------------------- SAM
def test_preprocess_sam_full_size_shapes():
    sam = preprocess_sam(np.zeros((400, 600, 3), dtype=np.uint8), SegmentationEncoderConfig())
    assert isinstance(sam, SamInput)
    assert sam.pixel_values.shape == (3, 1024, 1024)
    assert sam.pixel_values.dtype == torch.float32
    assert sam.original_size == (400, 600)
    assert sam.scaled_size == (683, 1024)


def test_preprocess_sam_normalises_content_and_zero_pads():
    colour = (10, 128, 250)
    sam = preprocess_sam(_constant_image(50, 30, colour), SAM_SMALL)
    assert sam.scaled_size == (128, 77)
    content = sam.pixel_values[:, :128, :77]
    expected = _normalised(colour, SAM_SMALL.image_mean, SAM_SMALL.image_std).float()
    torch.testing.assert_close(content, expected.view(3, 1, 1).expand_as(content), atol=1e-6, rtol=0)
    # The pad is exactly zero after normalisation, not the normalised black.
    assert torch.count_nonzero(sam.pixel_values[:, :, 77:]) == 0


def test_preprocess_sam_pads_bottom_for_landscape():
    sam = preprocess_sam(_constant_image(30, 50, (255, 255, 255)), SAM_SMALL)
    assert sam.scaled_size == (77, 128)
    assert torch.count_nonzero(sam.pixel_values[:, 77:, :]) == 0
    assert (sam.pixel_values[:, :77, :] > 0).all()


def test_preprocess_sam_rejects_unknown_resample():
    with pytest.raises(ValueError, match="resample"):
        preprocess_sam(
            _constant_image(8, 8, (0, 0, 0)), SegmentationEncoderConfig(image_size=16, resample=99)
        )


# ----------------------------------------------------------------------------------------- SigLIP
def test_mean_fill_colour_truncates():
    assert mean_fill_colour((0.5, 0.5, 0.5)) == (127, 127, 127)
    assert mean_fill_colour((0.485, 0.456, 0.406)) == (123, 116, 103)


def test_expand_to_square_landscape_offset():
    image = _constant_image(2, 5, (255, 0, 0))  # H=2, W=5 -> content on rows 1..2 of 5
    square = np.asarray(expand_to_square(image, (7, 8, 9)))
    assert square.shape == (5, 5, 3)
    assert (square[1:3] == (255, 0, 0)).all()
    assert (square[[0, 3, 4]] == (7, 8, 9)).all()


def test_expand_to_square_portrait_offset():
    image = _constant_image(6, 3, (0, 255, 0))  # H=6, W=3 -> content on columns (6-3)//2 = 1..3
    square = np.asarray(expand_to_square(image, (127, 127, 127)))
    assert square.shape == (6, 6, 3)
    assert (square[:, 1:4] == (0, 255, 0)).all()
    assert (square[:, [0, 4, 5]] == 127).all()


def test_expand_to_square_keeps_square_images():
    image = _constant_image(4, 4, (1, 2, 3))
    assert expand_to_square(image, (0, 0, 0)) is image


def test_siglip_pad_to_square_uses_mean_colour_and_override():
    image = _constant_image(20, 56, (200, 200, 200))
    padded = siglip_pixels_uint8(image, SIGLIP_SMALL)  # config default: pad
    assert padded.shape == (3, 56, 56)
    assert padded.dtype == torch.uint8
    assert (padded[:, 0] == 127).all()
    assert (padded[:, 28] == 200).all()
    squashed = siglip_pixels_uint8(image, SIGLIP_SMALL, pad_to_square=False)
    assert (squashed == 200).all()


def test_preprocess_siglip_is_normalised_uint8_view():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    pixels = preprocess_siglip(image, SIGLIP_SMALL)
    assert pixels.shape == (3, 56, 56)
    assert pixels.dtype == torch.float32
    raw = siglip_pixels_uint8(image, SIGLIP_SMALL).double()
    torch.testing.assert_close(pixels.double(), (raw / 255 - 0.5) / 0.5, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ masks
def test_preprocess_mask_nearest_upscale_and_pad():
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(64, 32))
    out = preprocess_mask(labels, SAM_SMALL, pad_value=255)
    assert out.shape == (128, 128)
    assert out.dtype == torch.uint8
    # An exact 2x upscale: NEAREST copies each label into a 2x2 block, inventing nothing.
    np.testing.assert_array_equal(out[:, :64].numpy(), np.kron(labels, np.ones((2, 2), dtype=np.uint8)))
    assert (out[:, 64:] == 255).all()


def test_preprocess_mask_accepts_bool_tensor_and_default_pad():
    mask = torch.zeros(30, 50, dtype=torch.bool)
    mask[:, 25:] = True
    out = preprocess_mask(mask, SAM_SMALL)
    assert set(out.unique().tolist()) == {0, 1}
    assert (out[77:] == 0).all()
    assert (out[:77, 64:] == 1).all() and (out[:77, :64] == 0).all()


def test_preprocess_masks_matches_single_and_handles_empty():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 45, 20)) > 0.5
    batched = preprocess_masks(masks, SAM_SMALL)
    assert batched.shape == (3, 128, 128)
    for index in range(3):
        assert torch.equal(batched[index], preprocess_mask(masks[index], SAM_SMALL))
    assert preprocess_masks(np.zeros((0, 45, 20), dtype=bool), SAM_SMALL).shape == (0, 128, 128)


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.zeros((2, 3, 4), dtype=np.uint8), ValueError),  # wrong ndim for a single mask
        (np.zeros((4, 4), dtype=np.float32), TypeError),
        (np.full((4, 4), 300, dtype=np.int64), ValueError),
        ([[0, 1]], TypeError),
    ],
)
def test_preprocess_mask_rejects_bad_masks(mask, error):
    with pytest.raises(error):
        preprocess_mask(mask, SAM_SMALL)


def test_preprocess_mask_rejects_bad_pad_value():
    with pytest.raises(ValueError, match="pad_value"):
        preprocess_mask(np.zeros((4, 4), dtype=np.uint8), SAM_SMALL, pad_value=-1)


# ------------------------------------------------------------------------------- post-processing
def test_postprocess_masks_shape_and_constant_exact():
    logits = torch.full((2, 3, 128, 128), -0.3)
    out = postprocess_masks(logits, Frame((400, 600), (683, 1024), 1024))
    assert out.shape == (2, 3, 400, 600)
    assert out.dtype == torch.float32
    assert (out == torch.tensor(-0.3)).all()


def test_postprocess_masks_crops_padding():
    # Positive over the image (first 720/8 = 90 columns), strongly negative over the pad: after the
    # crop nothing of the pad may remain, whereas resizing the whole canvas would keep ~30% of it.
    logits = torch.full((1, 128, 128), -10.0)
    logits[:, :, :90] = 10.0
    out = postprocess_masks(logits, Frame((512, 360), (1024, 720), 1024))
    assert out.shape == (1, 512, 360)
    assert (out > 0).all()


def test_postprocess_masks_float32_and_empty():
    bf16 = torch.zeros(16, 16, dtype=torch.bfloat16)
    assert postprocess_masks(bf16, Frame((50, 30), (128, 77), 128)).dtype == torch.float32
    assert postprocess_masks(torch.zeros(0, 16, 16), Frame((50, 30), (128, 77), 128)).shape == (0, 50, 30)
    with pytest.raises(ValueError, match="canvas"):
        postprocess_masks(torch.zeros(16, 16), Frame((50, 30), (129, 77), 128))


# -------------------------------------------------------------------------------- visual prompts
def test_point_mask_disk_area_and_centre():
    mask = point_mask(np.array([[50.0, 60.0]]), (200, 300), radius=10)
    assert mask.shape == (200, 300) and mask.dtype == bool
    assert abs(mask.sum() - np.pi * 100) / (np.pi * 100) < 0.02  # 317 pixels
    assert mask[60, 50] and mask[60, 60] and not mask[60, 61] and not mask[71, 50]


def test_point_mask_radius_3_matches_official_shape():
    # The r=3 disk the official fixtures used for the interactive-segmentation prompt (29 pixels).
    expected = np.array(
        [
            [0, 0, 0, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    mask = point_mask([[170, 200]], (512, 360), radius=3)
    assert mask.sum() == 29
    np.testing.assert_array_equal(mask[197:204, 167:174], expected)


def test_point_mask_clips_and_merges_points():
    clipped = point_mask([[-50, 500]], (100, 100), radius=2)
    assert clipped[99, 0]  # moved to the bottom-left corner pixel, not dropped
    both = point_mask([[10, 10], [10.4, 9.6], [80, 80]], (100, 100), radius=0)
    assert both.sum() == 2


@pytest.mark.parametrize(
    "points", [np.zeros((0, 2)), np.zeros((3,)), np.zeros((2, 3)), np.array([[np.nan, 1.0]])]
)
def test_point_mask_rejects_bad_points(points):
    with pytest.raises(ValueError):
        point_mask(points, (10, 10))


def test_point_mask_rejects_negative_radius():
    with pytest.raises(ValueError, match="radius"):
        point_mask([[1, 1]], (10, 10), radius=-1)


def test_box_mask_inclusive_area():
    mask = box_mask((10, 20, 19, 24), (100, 100))
    assert mask.sum() == 10 * 5
    assert mask[20, 10] and mask[24, 19] and not mask[25, 19] and not mask[24, 20]


def test_box_mask_clips_and_rounds():
    assert box_mask((-5, -5, 200, 3), (10, 20)).sum() == 20 * 4
    assert box_mask((1.4, 1.5, 1.4, 1.5), (10, 10)).sum() == 1  # degenerate box -> one pixel
    assert box_mask((1.4, 1.5, 1.4, 1.5), (10, 10))[2, 1]


@pytest.mark.parametrize("box", [(5, 0, 4, 3), (0, 5, 3, 4), (1, 2, 3)])
def test_box_mask_rejects_bad_boxes(box):
    with pytest.raises(ValueError):
        box_mask(box, (10, 10))


def test_scribble_mask_covers_vertices_and_line():
    vertices = np.array([[10, 10], [80, 40], [30, 90]])
    thin = scribble_mask(vertices, (100, 120), radius=0)
    for x, y in vertices:
        assert thin[y, x]
    # Each segment is sampled once per step along its longer axis: 70 + 50 steps + the first vertex.
    assert thin.sum() == 70 + 50 + 1
    thick = scribble_mask(vertices, (100, 120), radius=5)
    assert (thick >= thin).all() and thick.sum() > 5 * thin.sum()
    assert thick[10 + 5, 10] and not thick[10 + 6, 10 - 1]


def test_scribble_single_vertex_is_a_point():
    np.testing.assert_array_equal(
        scribble_mask([[7, 9]], (20, 20), radius=5), point_mask([[7, 9]], (20, 20), radius=5)
    )


def test_scribble_mask_rejects_bad_polyline():
    with pytest.raises(ValueError, match="polyline"):
        scribble_mask(np.zeros((4, 3)), (10, 10))
    with pytest.raises(ValueError):
        scribble_mask(np.zeros((0, 2)), (10, 10))
    with pytest.raises(ValueError, match="size_hw"):
        scribble_mask([[1, 1]], (0, 10))


# ------------------------------------------------------------------------------------ load_image
def test_load_image_from_path(tmp_path):
    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    for source in (path, str(path)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (6, 4)
        np.testing.assert_array_equal(np.asarray(image), array)


def test_load_image_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        load_image(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        load_image(text)


def test_load_image_converts_modes():
    grey = load_image(Image.new("L", (3, 2), 77))
    assert grey.mode == "RGB" and (np.asarray(grey) == 77).all()
    opaque = load_image(Image.new("RGBA", (3, 2), (10, 20, 30, 255)))
    assert opaque.mode == "RGB" and (np.asarray(opaque) == (10, 20, 30)).all()
    transparent = load_image(Image.new("RGBA", (3, 2), (10, 20, 30, 0)))
    assert (np.asarray(transparent) == 255).all()  # flattened onto white


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1), (4, 5, 3), (4, 5, 4)])
def test_load_image_from_arrays(shape):
    array = np.full(shape, 9, dtype=np.uint8)
    if len(shape) == 3 and shape[2] == 4:
        array[..., 3] = 255  # opaque
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert (np.asarray(image) == 9).all()


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((4, 5, 3), dtype=np.float32), TypeError, "uint8"),
        (np.zeros((4, 5, 2), dtype=np.uint8), ValueError, "shape|\\(H, W"),
        (np.zeros((0, 5, 3), dtype=np.uint8), ValueError, "empty"),
        (np.zeros((2, 4, 5, 3), dtype=np.uint8), ValueError, "\\(H, W"),
        (42, TypeError, "int"),
        (torch.zeros(3, 4, 5), TypeError, "Tensor"),
    ],
)
def test_load_image_rejects_bad_inputs(image, error, message):
    with pytest.raises(error, match=message):
        load_image(image)


@pytest.mark.parametrize(
    "size_in, size_out, vertical_first",
    [
        ((360, 512), (384, 384), True),  # taller than wide, squashed: the height shrinks more
        ((400, 600), (384, 384), True),
        ((500, 701), (400, 500), True),  # 201 rows less > 2 x 100 columns less
        ((500, 700), (400, 500), False),  # 200 rows: not more than twice 100
        ((512, 360), (384, 384), False),
        ((132, 230), (211, 335), False),  # both grow: horizontal first
    ],
)
def test_resize_runs_its_passes_in_pillow_13s_order(size_in, size_out, vertical_first):
    """Two passes, each rounded to 8 bits: their order shows. resize_image fixes it to Pillow 13's,
    so the SigLIP view of a portrait photo is the same under any installed Pillow."""
    pixels = np.random.default_rng(0).integers(0, 256, (size_in[1], size_in[0], 3), dtype=np.uint8)
    image, bicubic = Image.fromarray(pixels), Image.Resampling.BICUBIC
    width, height = size_out
    first = (size_in[0], height) if vertical_first else (width, size_in[1])
    expected = np.asarray(image.resize(first, bicubic).resize(size_out, bicubic))
    ours = np.asarray(resize_image(image, size_out, bicubic))
    np.testing.assert_array_equal(ours, expected)
    other = (width, size_in[1]) if vertical_first else (size_in[0], height)
    assert (np.asarray(image.resize(other, bicubic).resize(size_out, bicubic)) != ours).any()
    if int(PIL.__version__.split(".")[0]) >= 13:
        np.testing.assert_array_equal(ours, np.asarray(image.resize(size_out, bicubic)))
