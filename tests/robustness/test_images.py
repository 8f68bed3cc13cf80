"""Bad and unusual images, generated at test time: every one is read the documented way or refused with
an error that names it; nothing decodes a bomb."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from PIL import Image

from bad_inputs import write_bomb, write_truncated_jpeg
from xsam import processing
from xsam.config import XSamConfig
from xsam.processing import (
    STORED_FRAME,
    AnimatedImageWarning,
    ImageError,
    ImagePolicy,
    load_image,
    preprocess_sam,
    sam_scaled_size,
)


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    path = write_truncated_jpeg(tmp_path / "photo.jpg")
    with pytest.raises(ImageError, match=r"photo\.jpg.*truncated or corrupt"):
        load_image(path)


def test_a_text_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match=r"cannot read .*notes\.png as an image"):
        load_image(path)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = write_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    start = time.perf_counter()
    with pytest.raises(
        ImageError, match=r"bomb\.png is 12000x12000 = 144,000,000 pixels, more than the limit"
    ):
        load_image(path)
    assert time.perf_counter() - start < 1.0  # the header alone decided it
    with pytest.raises(ImageError, match="limit of 1,000"):
        load_image(path, policy=ImagePolicy(max_pixels=1000))


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", np.array([[0, 257, 65535]], dtype=np.uint16), [0, 1, 255]),
        ("I", np.array([[0, 25700, 65535]], dtype=np.int32), [0, 100, 255]),
        ("I", np.array([[0, 100, 255]], dtype=np.int32), [0, 100, 255]),  # already 8-bit values
        ("F", np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),
        ("F", np.array([[0.0, 100.0, 300.0]], dtype=np.float32), [0, 100, 255]),
    ],
)
def test_high_bit_depth_images_are_scaled_to_eight_bits(tmp_path, mode, values, expected):
    image = Image.fromarray(values)  # uint16 -> I;16, int32 -> I, float32 -> F
    assert image.mode == mode
    rgb = np.asarray(load_image(image))
    assert rgb[..., 0].tolist() == [expected] and (rgb == rgb[..., :1]).all()


def test_a_sixteen_bit_png_is_not_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    grey = np.asarray(load_image(path))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 200
    assert np.asarray(load_image(ramp))[..., 0].tolist() == grey.tolist()  # uint16 arrays alike


def test_exif_orientation_is_applied_by_default_and_can_be_turned_off(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored frame
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    shown = load_image(path)
    assert shown.size == (20, 40)  # displayed upright: 20 wide, 40 high
    assert np.asarray(shown)[:10].mean() > 200 and np.asarray(shown)[-10:].mean() < 50  # band on top
    assert load_image(path, policy=STORED_FRAME).size == (40, 20)
    assert load_image(shown).size == (20, 40)  # loading the result again does not rotate it twice


def test_transparency_is_flattened_onto_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    flat = np.asarray(load_image(rgba))
    assert flat[0, 0].tolist() == [10, 20, 30] and flat[0, 1].tolist() == [255, 255, 255]
    assert 120 <= flat[1, 0, 0] <= 135
    palette = Image.new("P", (1, 1), 0)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(palette)).tolist() == [[[255, 255, 255]]]


def test_an_animated_image_gives_its_first_frame_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setattr(processing, "_ANIMATION_SAID", False)
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.warns(AnimatedImageWarning, match=r"anim\.gif is animated"):
        first = load_image(path)
    assert np.asarray(first)[0, 0, 0] > 200 and np.asarray(first)[0, 0, 2] < 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(path)  # said once per process


@pytest.mark.parametrize("size", [(10000, 16), (16, 10000), (1, 1), (3, 5000)])
def test_any_aspect_ratio_reaches_the_sam_canvas(size):
    scaled = sam_scaled_size(size, 1024)
    assert min(scaled) >= 1 and max(scaled) == 1024
    sam = preprocess_sam(np.zeros((*size, 3), dtype=np.uint8), XSamConfig.tiny().segmentation_encoder)
    assert min(sam.scaled_size) >= 1


def test_unsupported_arrays_are_clear_errors():
    with pytest.raises(TypeError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
