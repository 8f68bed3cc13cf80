"""The ground floor of every image and mask: loading, the two model views, masks on the SAM canvas,
visual-prompt rasterisation and COCO RLE. Plain functions, no ``nn.Module``; nothing of xsam but the
config is imported here.

X-SAM looks at every image twice:

* the **SigLIP** view (:func:`preprocess_siglip`): optionally padded to a square with the mean colour,
  then squashed to ``S x S`` (no aspect preservation), rescaled by 1/255 and normalised;
* the **SAM** view (:func:`preprocess_sam`): the longest side resized to ``S`` (aspect kept), rescaled,
  ImageNet-normalised and zero-padded bottom/right to an ``S x S`` canvas.

A :class:`Frame` records where the image sits on that canvas. Ground-truth masks and visual prompts
follow the SAM view (:func:`preprocess_mask`), and mask logits predicted on the canvas go back to the
original image with :func:`postprocess_masks`.

Conventions used throughout:

* sizes are ``(height, width)`` tuples; image tensors are channels-first ``(3, H, W)``;
* the SAM canvas holds the resized image in its top-left corner, rows ``[0, h)`` and columns ``[0, w)``
  where ``(h, w)`` is the *scaled size*;
* visual prompts are given in original-image pixel coordinates ``(x, y)``: ``x`` is the column index
  (to the right), ``y`` the row index (downwards), and pixel ``(row i, column j)`` sits at exactly
  ``(x=j, y=i)``. Fractional coordinates are rounded half-up to the nearest pixel.

All resizing goes through PIL with the filter named in the config (``resample``, a PIL integer), which
is what the official processors do; the parity tests pin this against the official outputs.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from xsam.config import ImageEncoderConfig, SegmentationEncoderConfig

ImageLike = str | Path | Image.Image | np.ndarray | bytes
"""Anything :func:`load_image` accepts: a path, a PIL image, an array, or an encoded file's bytes."""

# The official processors use ``rescale_factor = 1/255``.
_RESCALE_FACTOR = 1.0 / 255.0


# ------------------------------------------------------------------------------------------- files
def write_atomically(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` beside ``path`` and rename it into place: readers see the old file or the whole
    new one, never half of it, and a failure leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            temporary.write_text(data)
        else:
            temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG, for :func:`write_atomically`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ images
DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image :func:`load_image` accepts by default: a bit above large camera photos (8000 x 8000)."""

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """An image that cannot be used (unreadable, truncated, too large, empty); the message names it."""


class PixelLimitError(ImageError):
    """An image with more pixels than the policy allows."""


class AnimatedImageWarning(UserWarning):
    """An animated image was given; its first frame is used."""


@dataclass(frozen=True)
class ImagePolicy:
    """How :func:`load_image` reads every image, whatever face it came through.

    Attributes:
        max_pixels: refuse images with more pixels (checked before decoding); None: no limit of ours
            (Pillow's own decompression-bomb limit still applies).
        exif_transpose: apply the EXIF orientation, so that pixels and coordinates are in the frame a
            viewer shows. Dataset readers turn it off: annotations are made in the stored frame.
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive number of pixels, got {self.max_pixels}")


STORED_FRAME = ImagePolicy(exif_transpose=False)
"""The policy of dataset readers: EXIF orientation ignored, as the annotations' frame is the stored one."""


def load_image(image: ImageLike, *, policy: ImagePolicy | None = None) -> Image.Image:
    """Return ``image`` as an 8-bit RGB ``PIL.Image.Image``, read the same way for every caller.

    Args:
        image: a file path, the bytes of an encoded image file (PNG, JPEG, ...), a PIL image of any
            mode, or a ``uint8`` / ``uint16`` numpy array of shape ``(H, W)`` (grey), ``(H, W, 1)``,
            ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA).
        policy: pixel limit and EXIF handling (default: :class:`ImagePolicy`'s defaults).

    What is normalised, and how:

    * a file's pixel count is checked against ``policy.max_pixels`` before anything is decoded (an
      image already in memory, a PIL image or an array, is not limited);
    * animated images (GIF, APNG, WebP) give their first frame (an :class:`AnimatedImageWarning`
      says so once per process);
    * the EXIF orientation is applied (``policy.exif_transpose``), so that the image, its masks and
      the coordinates of visual prompts are in the displayed frame;
    * 16-bit and 32-bit integer images are scaled to 8 bits (divided by 257, so 65535 -> 255; 32-bit
      ones only when their values exceed 255), float images are read as ``[0, 1]`` (``[0, 255]`` when
      their values exceed 1) and clipped;
    * transparency is flattened onto white, as a viewer on a white page shows it (the official
      pipeline drops the alpha channel instead, which differs only for transparent pixels).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageError: the file is not an image, is truncated or corrupt, exceeds the pixel limit, or an
            array is empty or of an unsupported shape.
        TypeError: ``image`` is none of the accepted types, or the array's dtype is not supported.
    """
    policy = policy or ImagePolicy()
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return _decode(path, policy, str(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), policy, "the image data")
    if isinstance(image, Image.Image):
        return _normalised(image, policy)
    if isinstance(image, np.ndarray):
        return _normalised(_array_to_image(image), policy)
    raise TypeError(
        f"expected a path, a PIL image or a numpy array, got {type(image).__module__}.{type(image).__name__}"
    )


def _decode(source: Path | io.BytesIO, policy: ImagePolicy, name: str) -> Image.Image:
    """Open an encoded image (a file or bytes), check its size from the header, then decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(source) as opened:
                _check_pixels(opened.size, policy, name)
                opened.load()
                return _normalised(opened, policy, name)
    except Image.DecompressionBombError as error:
        raise PixelLimitError(f"{name}: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"cannot read {name} as an image (not an image file, or a format Pillow lacks)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"cannot read {name}: truncated or corrupt image ({error})") from error


def _check_pixels(size: tuple[int, int], policy: ImagePolicy, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is empty ({width}x{height})")
    if policy.max_pixels is not None and width * height > policy.max_pixels:
        raise PixelLimitError(
            f"{name} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{policy.max_pixels:,} (raise it with max_pixels= / --max-image-pixels)"
        )


_ANIMATION_SAID = False


def _first_frame(image: Image.Image, name: str) -> Image.Image:
    global _ANIMATION_SAID
    if getattr(image, "n_frames", 1) <= 1:
        return image
    image.seek(0)
    if not _ANIMATION_SAID:
        _ANIMATION_SAID = True
        warnings.warn(f"{name} is animated: its first frame is used", AnimatedImageWarning, stacklevel=4)
    return image


def _normalised(image: Image.Image, policy: ImagePolicy, name: str = "the image") -> Image.Image:
    """The conversions of :func:`load_image` on an opened image."""
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{name} is empty ({image.width}x{image.height})")
    image = _first_frame(image, name)
    if policy.exif_transpose:
        image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_MODES or image.mode == "F":
        image = _eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    rgb.info.clear()  # no EXIF left: loading the result again must not rotate it a second time
    return rgb


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grey image as 8-bit grey (see :func:`load_image`)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
    elif image.mode == "I" and (values.size == 0 or values.max() <= 255):
        scaled = values
    else:
        scaled = values / 257.0
    return Image.fromarray(np.nan_to_num(scaled).round().clip(0, 255).astype(np.uint8))


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"image arrays must be uint8 (0..255) or uint16 (0..65535), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array is empty: shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def mean_fill_colour(image_mean: tuple[float, ...]) -> tuple[int, ...]:
    """Padding colour for :func:`expand_to_square`: ``int(m * 255)`` per channel (truncation, as xtuner).

    SigLIP's mean ``(0.5, 0.5, 0.5)`` gives ``(127, 127, 127)``.
    """
    return tuple(int(mean * 255) for mean in image_mean)


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side of ``image`` to make it square, keeping the content centred.

    The content's top-left corner goes to column ``(side - W) // 2``, row ``(side - H) // 2`` (as
    xtuner's ``expand2square``): a landscape image gets bands above and below, a portrait one left and
    right, and an odd remainder puts the extra pixel at the bottom/right. A square image is returned
    unchanged (the same object).

    Args:
        image: PIL image of size ``W x H``.
        fill: padding colour, one integer per band (e.g. ``(127, 127, 127)``).

    Returns:
        PIL image of size ``max(W, H)`` squared, same mode as ``image``.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), tuple(fill))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


_SEPARABLE = frozenset(
    {
        Image.Resampling.BOX,
        Image.Resampling.BILINEAR,
        Image.Resampling.HAMMING,
        Image.Resampling.BICUBIC,
        Image.Resampling.LANCZOS,
    }
)


def resize_image(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``image.resize(size, resample)``, the same with every Pillow version.

    Pillow applies its convolution filters as two passes, one per axis, each rounding to 8 bits, so the
    order of the passes shows in the result (up to ~20 levels at fine detail). Pillow 13 runs the
    vertical pass first when the height shrinks, by more than twice as many pixels as the width does;
    older Pillow always runs the horizontal pass first. The official implementation's fixtures follow
    Pillow 13, so this runs the passes one at a time in that order, whatever Pillow is installed
    (``size`` is ``(width, height)``).
    """
    width, height = size
    filter_ = _resample_filter(resample)
    if filter_ not in _SEPARABLE or width == image.width or height == image.height:
        return image.resize(size, resample=filter_)  # one pass at most: no order to choose
    if image.height > height and image.height - height > 2 * (image.width - width):
        return image.resize((image.width, height), resample=filter_).resize(size, resample=filter_)
    return image.resize((width, image.height), resample=filter_).resize(size, resample=filter_)


def _resample_filter(resample: int) -> Image.Resampling:
    try:
        return Image.Resampling(resample)
    except ValueError as error:
        raise ValueError(f"resample={resample!r} is not a PIL resampling filter") from error


def image_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image ``W x H`` -> ``(3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def rescale_and_normalise(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> float32 ``(pixels / 255 - mean) / std``.

    The rescale runs in float64 and the normalisation in float32, in the same order as the
    transformers image processors, so results agree with the official ones to float32 rounding.
    """
    if len(mean) != pixels.shape[0] or len(std) != pixels.shape[0]:
        raise ValueError(
            f"image_mean/image_std need {pixels.shape[0]} values, got {len(mean)} and {len(std)}"
        )
    scaled = (pixels.to(torch.float64) * _RESCALE_FACTOR).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (scaled - mean_t) / std_t


# ------------------------------------------------------------------------------------------ SigLIP
def siglip_pixels_uint8(
    image: ImageLike, config: ImageEncoderConfig, *, pad_to_square: bool | None = None
) -> torch.Tensor:
    """The SigLIP view before rescaling: optional mean-colour square padding, then resize to ``S x S``.

    Args:
        image: anything :func:`load_image` accepts.
        config: uses ``image_size`` (``S``), ``image_mean`` (padding colour), ``resample``.
        pad_to_square: overrides ``config.pad_to_square`` when given (the release pads for evaluation
            and demos, not for stage-3 training).

    Returns:
        ``(3, S, S)`` uint8 tensor, RGB.
    """
    rgb = load_image(image)
    if config.pad_to_square if pad_to_square is None else pad_to_square:
        rgb = expand_to_square(rgb, mean_fill_colour(config.image_mean))
    size = config.image_size
    resized = resize_image(rgb, (size, size), config.resample)
    return image_to_uint8_tensor(resized)


def preprocess_siglip(
    image: ImageLike, config: ImageEncoderConfig, *, pad_to_square: bool | None = None
) -> torch.Tensor:
    """SigLIP input: :func:`siglip_pixels_uint8`, then ``(u / 255 - image_mean) / image_std``.

    Returns:
        ``(3, S, S)`` float32 tensor (in ``[-1, 1]`` for SigLIP's mean = std = 0.5).
    """
    pixels = siglip_pixels_uint8(image, config, pad_to_square=pad_to_square)
    return rescale_and_normalise(pixels, config.image_mean, config.image_std)


# --------------------------------------------------------------------------------------------- SAM
@dataclass(frozen=True)
class Frame:
    """Where one image sits on the SAM canvas: the sizes every canvas <-> image mapping needs.

    Attributes:
        original_size: ``(H, W)`` of the image as given.
        scaled_size: ``(h, w)`` of its resized copy in the canvas's top-left corner (``max(h, w) == S``
            for the plain resize; smaller after stage-1 scale jitter).
        canvas_size: ``S``, the side of the square SAM input.
    """

    original_size: tuple[int, int]
    scaled_size: tuple[int, int]
    canvas_size: int

    @classmethod
    def for_image(cls, original_size: tuple[int, int], canvas_size: int) -> Frame:
        """The frame of the plain SAM resize (longest side to ``canvas_size``)."""
        size = (int(original_size[0]), int(original_size[1]))
        return cls(size, sam_scaled_size(size, canvas_size), int(canvas_size))


@dataclass
class SamInput:
    """The SAM view of one image.

    Attributes:
        pixel_values: ``(3, S, S)`` float32, normalised image in the top-left ``scaled_size`` corner,
            exact zeros elsewhere.
        frame: the image's sizes on the canvas.
    """

    pixel_values: torch.Tensor
    frame: Frame

    @property
    def original_size(self) -> tuple[int, int]:
        return self.frame.original_size

    @property
    def scaled_size(self) -> tuple[int, int]:
        return self.frame.scaled_size


def sam_scaled_size(original_size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` with the longest side equal to ``longest_side``, rounded half-up.

    ``(512, 360) -> (1024, 720)`` and ``(400, 600) -> (683, 1024)`` for ``longest_side=1024``. The scale is
    computed first and then multiplied, in the official order, so ties round the same way.
    """
    height, width = original_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {original_size}")
    scale = longest_side * 1.0 / max(height, width)
    # a side that would round to 0 (a 10000 x 16 strip) keeps one pixel
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def preprocess_sam(image: ImageLike, config: SegmentationEncoderConfig) -> SamInput:
    """SAM input: resize the longest side to ``S``, rescale, normalise, zero-pad bottom/right to ``S x S``.

    Padding happens after normalisation, so the padded area is exactly 0 (not the mean colour).

    Args:
        image: anything :func:`load_image` accepts.
        config: uses ``image_size`` (``S``), ``image_mean``, ``image_std``, ``resample``.
    """
    rgb = load_image(image)
    frame = Frame.for_image((rgb.height, rgb.width), config.image_size)
    height, width = frame.scaled_size
    resized = resize_image(rgb, (width, height), config.resample)
    pixels = rescale_and_normalise(image_to_uint8_tensor(resized), config.image_mean, config.image_std)
    return SamInput(pixel_values=pad_bottom_right(pixels, config.image_size, 0), frame=frame)


def pad_bottom_right(values: torch.Tensor, size: int, pad_value: float) -> torch.Tensor:
    """Pad the last two dims of ``values`` (``(..., h, w)``, ``h, w <= size``) to ``size x size``."""
    height, width = values.shape[-2:]
    return F.pad(values, (0, size - width, 0, size - height), value=pad_value)


# ------------------------------------------------------------------------------------------- masks
def _mask_to_uint8_array(mask: np.ndarray | torch.Tensor, expected_ndim: int) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    if not isinstance(array, np.ndarray):
        raise TypeError(f"masks must be numpy arrays or torch tensors, got {type(mask).__name__}")
    if array.ndim != expected_ndim:
        raise ValueError(f"expected a mask with {expected_ndim} dims, got shape {tuple(array.shape)}")
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        return array.astype(np.uint8, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"integer mask labels must lie in 0..255, got {array.min()}..{array.max()}")
        return array.astype(np.uint8)
    raise TypeError(f"masks must be bool or integer (labels 0..255), got dtype {array.dtype}")


def _resize_and_pad_mask(mask: np.ndarray, config: SegmentationEncoderConfig, pad_value: int) -> torch.Tensor:
    """``(H, W)`` uint8 -> ``(S, S)`` uint8 with NEAREST, which never invents labels."""
    height, width = sam_scaled_size(mask.shape, config.image_size)
    resized = Image.fromarray(np.ascontiguousarray(mask)).resize(
        (width, height), resample=Image.Resampling.NEAREST
    )
    return pad_bottom_right(torch.from_numpy(np.array(resized)), config.image_size, pad_value)


def preprocess_mask(
    mask: np.ndarray | torch.Tensor, config: SegmentationEncoderConfig, *, pad_value: int = 0
) -> torch.Tensor:
    """Bring a mask at original image size onto the SAM canvas, like :func:`preprocess_sam` does images.

    Args:
        mask: ``(H, W)`` bool, uint8 or integer labels in ``0..255`` (binary masks, label maps, prompts).
        config: uses ``image_size`` (``S``); the resize is always PIL NEAREST.
        pad_value: value of the canvas outside the scaled image (the official ``ignore_index`` is 0).

    Returns:
        ``(S, S)`` uint8; the resized mask fills rows ``[0, h)`` and columns ``[0, w)`` of the scaled size.
    """
    _check_pad_value(pad_value)
    return _resize_and_pad_mask(_mask_to_uint8_array(mask, 2), config, pad_value)


def preprocess_masks(
    masks: np.ndarray | torch.Tensor, config: SegmentationEncoderConfig, *, pad_value: int = 0
) -> torch.Tensor:
    """Batched :func:`preprocess_mask`: ``(N, H, W)`` -> ``(N, S, S)`` uint8 (``N`` may be 0)."""
    _check_pad_value(pad_value)
    array = _mask_to_uint8_array(masks, 3)
    if array.shape[0] == 0:
        sam_scaled_size(array.shape[1:], config.image_size)  # validates H, W
        return torch.zeros((0, config.image_size, config.image_size), dtype=torch.uint8)
    return torch.stack([_resize_and_pad_mask(single, config, pad_value) for single in array])


def _check_pad_value(pad_value: int) -> None:
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must lie in 0..255 (uint8 masks), got {pad_value}")


def postprocess_masks(mask_logits: torch.Tensor, frame: Frame) -> torch.Tensor:
    """Map mask logits predicted on the SAM canvas back to the original image.

    Official chain: bilinear (``align_corners=False``) up to ``canvas_size x canvas_size``, crop the
    scaled image ``[:h, :w]`` (dropping the padding), bilinear to ``original_size``. The two resizes
    do not commute with a single direct resize, so both are kept for parity.

    Args:
        mask_logits: ``(..., m, m)`` logits on the canvas grid (``m = canvas_size / 8`` in X-SAM), any
            number of leading dims.
        frame: the image's sizes on the canvas.

    Returns:
        ``(..., H, W)`` float32 logits (computed in float32 whatever the input dtype; threshold them
        yourself).
    """
    canvas_size, scaled_size, original_size = frame.canvas_size, frame.scaled_size, frame.original_size
    if mask_logits.dim() < 2:
        raise ValueError(
            f"mask_logits needs at least 2 dims (..., h, w), got shape {tuple(mask_logits.shape)}"
        )
    if not (0 < scaled_size[0] <= canvas_size and 0 < scaled_size[1] <= canvas_size):
        raise ValueError(f"scaled_size {scaled_size} must lie inside the {canvas_size}x{canvas_size} canvas")
    leading = mask_logits.shape[:-2]
    if mask_logits.numel() == 0:  # e.g. no query survived; interpolate rejects empty inputs
        return mask_logits.new_zeros((*leading, *original_size), dtype=torch.float32)
    # interpolate wants (N, C, h, w); bilinear treats channels independently, so fold all leading dims.
    flat = mask_logits.to(torch.float32).reshape(1, math.prod(leading), *mask_logits.shape[-2:])
    canvas = F.interpolate(flat, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False)
    cropped = canvas[..., : scaled_size[0], : scaled_size[1]]
    restored = F.interpolate(cropped, size=tuple(original_size), mode="bilinear", align_corners=False)
    return restored.reshape(*leading, *original_size)


def restore_prompt_masks(prompt_masks: torch.Tensor, frame: Frame) -> torch.Tensor:
    """Canvas visual-prompt masks -> original frame, as the official interactive post-processing does.

    Crop ``[:h_s, :w_s]``, then PyTorch's legacy ``nearest`` resize to ``(H, W)``. The round trip
    original -> canvas -> original is not always the identity (it is for 2x upscaled images).

    Args:
        prompt_masks: ``(..., S, S)`` masks on the SAM canvas (any dtype, nonzero = inside).
        frame: the image's sizes on the canvas.

    Returns:
        ``(..., H, W)`` bool.
    """
    height, width = frame.scaled_size
    leading = prompt_masks.shape[:-2]
    cropped = prompt_masks[..., :height, :width].to(torch.float32).reshape(1, -1, height, width)
    restored = F.interpolate(cropped, size=tuple(frame.original_size), mode="nearest")
    return restored.reshape(*leading, *frame.original_size) != 0


class SegmentationTarget(NamedTuple):
    """Ground truth of one decoder sample, on the SAM canvas (what sample building gives the loss).

    Attributes:
        labels: ``(T,)`` int64 indices into the sample's ``C + 1`` class columns, or None for
            label-free targets (then class logits must have one column).
        masks: ``(T, H, W)`` binary masks (bool / integer / float), padded to the model input
            (1024² in X-SAM); every sample of a batch must use the same ``(H, W)``.
        ignore_masks: optional ``(T, H, W)`` bool, True where a point must not count.
    """

    labels: torch.Tensor | None
    masks: torch.Tensor
    ignore_masks: torch.Tensor | None = None

    @classmethod
    def from_ignore_value(
        cls, labels: torch.Tensor | None, masks: torch.Tensor, *, ignore_value: int = 255
    ) -> SegmentationTarget:
        """Split integer masks holding ``0`` / ``1`` / ``ignore_value`` into masks and ignore masks."""
        ignore = masks == ignore_value
        return cls(labels, masks == 1, ignore if bool(ignore.any()) else None)


# -------------------------------------------------------------------------------------------- RLE
def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of an ``(H, W)`` bool mask: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE (``counts`` compressed as str or bytes, or uncompressed as a list) -> ``(H, W)`` bool.

    Raises:
        ValueError: ``rle`` is not a mapping with ``size`` ``[H, W]`` and ``counts``, or its counts do
            not describe an ``H x W`` mask.
    """
    from pycocotools import mask as mask_utils

    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError("expected an RLE object with 'size' and 'counts'")
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_count(v) for v in size)):
        raise ValueError(f"an RLE's size must be [height, width], got {size!r}")
    if isinstance(counts, list):
        if not all(_is_count(v) for v in counts):
            raise ValueError("an uncompressed RLE's counts must be non-negative integers")
        if sum(counts) != size[0] * size[1]:
            raise ValueError(
                f"the RLE's counts add up to {sum(counts)} pixels, its size is {size[0]}x{size[1]}"
            )
        coded = mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size)
    elif isinstance(counts, (str, bytes)):
        coded = {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(
            f"an RLE's counts must be a string or a list of integers, got {type(counts).__name__}"
        )
    try:
        mask = mask_utils.decode(coded)
    except (TypeError, ValueError, UnicodeError) as error:
        raise ValueError(f"invalid RLE ({error})") from None
    if mask.shape != (size[0], size[1]):
        raise ValueError(f"invalid RLE: it decodes to {mask.shape}, its size is {size[0]}x{size[1]}")
    return mask.astype(bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------- visual prompts
def _check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    if len(size_hw) != 2 or min(size_hw) <= 0:
        raise ValueError(f"size_hw must be a positive (height, width), got {size_hw}")
    return int(size_hw[0]), int(size_hw[1])


def _check_radius(radius: int) -> int:
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


def _pixel_coordinates(xy: np.ndarray | torch.Tensor, size_hw: tuple[int, int], name: str) -> np.ndarray:
    """``(N, 2)`` float ``(x, y)`` -> ``(N, 2)`` int64 ``(row, col)``, rounded half-up and clipped."""
    array = xy.detach().cpu().numpy() if isinstance(xy, torch.Tensor) else np.asarray(xy)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) as (x, y) pairs, got {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite numbers")
    pixels = np.floor(array.astype(np.float64) + 0.5).astype(np.int64)
    rows = np.clip(pixels[:, 1], 0, size_hw[0] - 1)
    cols = np.clip(pixels[:, 0], 0, size_hw[1] - 1)
    return np.stack([rows, cols], axis=1)


def _disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` bool disk: offsets with ``dy² + dx² <= r²`` (skimage's ``disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _stamp_disks(size_hw: tuple[int, int], centres: np.ndarray, radius: int) -> np.ndarray:
    """Union of ``radius`` disks around each ``(row, col)`` centre, i.e. a binary dilation of the centres."""
    height, width = size_hw
    mask = np.zeros((height, width), dtype=bool)
    disk = _disk(radius)
    for row, col in np.unique(centres, axis=0):
        top, left = row - radius, col - radius
        # Clip the stamp where the disk leaves the image.
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(row + radius + 1, height), min(col + radius + 1, width)
        mask[r0:r1, c0:c1] |= disk[r0 - top : r1 - top, c0 - left : c1 - left]
    return mask


def point_mask(
    points: np.ndarray | torch.Tensor, size_hw: tuple[int, int], *, radius: int = 10
) -> np.ndarray:
    """Point prompts as a binary mask: a filled disk of ``radius`` pixels around each point.

    Args:
        points: ``(N, 2)`` image pixel coordinates ``(x, y)``; out-of-image points are clipped to the
            nearest border pixel.
        size_hw: ``(H, W)`` of the image.
        radius: disk radius in pixels; the disk is every pixel with ``dx² + dy² <= radius²`` (317 pixels
            for the release's radius 10; 1 pixel for radius 0).

    Returns:
        ``(H, W)`` bool mask.
    """
    size_hw = _check_size(size_hw)
    centres = _pixel_coordinates(points, size_hw, "points")
    if len(centres) == 0:
        raise ValueError("points is empty; give at least one (x, y)")
    return _stamp_disks(size_hw, centres, _check_radius(radius))


def box_mask(box: tuple[float, float, float, float] | np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Box prompt as a binary mask: the filled rectangle.

    Bounds are inclusive after rounding: pixels with ``round(x0) <= col <= round(x1)`` and
    ``round(y0) <= row <= round(y1)`` are set, so an integer box ``(x0, y0, x1, y1)`` covers
    ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels and a degenerate box (``x0 == x1``) is still one pixel
    wide. Coordinates outside the image are clipped.

    Args:
        box: ``(x0, y0, x1, y1)`` in image pixel coordinates with ``x0 <= x1`` and ``y0 <= y1``.
        size_hw: ``(H, W)`` of the image.

    Returns:
        ``(H, W)`` bool mask.
    """
    size_hw = _check_size(size_hw)
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,):
        raise ValueError(f"box must be (x0, y0, x1, y1), got {np.shape(box)}")
    if values[2] < values[0] or values[3] < values[1]:
        raise ValueError(f"box needs x0 <= x1 and y0 <= y1, got {tuple(values.tolist())}")
    (top, left), (bottom, right) = _pixel_coordinates(values.reshape(2, 2), size_hw, "box")
    mask = np.zeros(size_hw, dtype=bool)
    mask[top : bottom + 1, left : right + 1] = True
    return mask


def _polyline_pixels(vertices: np.ndarray) -> np.ndarray:
    """Pixels on the straight segments between consecutive ``(row, col)`` vertices, endpoints included.

    Each segment is sampled once per pixel step along its longer axis and rounded half-up, which
    gives an 8-connected line (the same pixels as Bresenham's up to tie-breaking).
    """
    pieces = [vertices[:1]]
    for start, end in itertools.pairwise(vertices):
        steps = int(np.abs(end - start).max())
        t = np.linspace(0.0, 1.0, steps + 1)[:, None]
        pieces.append(np.floor(start + t * (end - start) + 0.5).astype(np.int64))
    return np.concatenate(pieces)


def scribble_mask(
    polyline: np.ndarray | torch.Tensor, size_hw: tuple[int, int], *, radius: int = 5
) -> np.ndarray:
    """Scribble prompt as a binary mask: the polyline drawn one pixel wide, dilated by a disk of ``radius``.

    Args:
        polyline: ``(K, 2)`` vertices ``(x, y)`` in image pixel coordinates, ``K >= 1``; vertices outside
            the image are clipped to the nearest border pixel before drawing.
        size_hw: ``(H, W)`` of the image.
        radius: dilation radius in pixels (the release uses 5).

    Returns:
        ``(H, W)`` bool mask.
    """
    size_hw = _check_size(size_hw)
    vertices = _pixel_coordinates(polyline, size_hw, "polyline")
    if len(vertices) == 0:
        raise ValueError("polyline is empty; give at least one (x, y) vertex")
    return _stamp_disks(size_hw, _polyline_pixels(vertices), _check_radius(radius))


# --------------------------------------------------------------------------------------- outlines
# The 8 neighbours as (row step, column step), clockwise on screen starting east: a boundary walk
# that scans them in this order keeps the region on its right-hand side.
_NEIGHBOURS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
_NEIGHBOUR_INDEX = {step: index for index, step in enumerate(_NEIGHBOURS)}
_WEST = 4


def trace_outline(mask: np.ndarray, start: tuple[int, int]) -> list[tuple[int, int]]:
    """The outer boundary pixels ``(row, col)`` of the 8-connected component holding ``start``, in
    clockwise order (Moore-neighbour tracing). ``start`` must be the component's first pixel in raster
    order, so that its west neighbour is background."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    row, col = start[0] + 1, start[1] + 1
    back, outline, first_step = _WEST, [(row - 1, col - 1)], None
    while True:
        for turn in range(1, 9):
            step = _NEIGHBOURS[(back + turn) % 8]
            if padded[row + step[0], col + step[1]]:
                break
        else:
            return outline  # an isolated pixel
        behind = _NEIGHBOURS[(back + turn - 1) % 8]
        next_row, next_col = row + step[0], col + step[1]
        if first_step is None:
            first_step = (row, col, next_row, next_col)
        elif (row, col, next_row, next_col) == first_step:
            return outline[:-1]  # back at the start, about to repeat the first step
        # the last background neighbour scanned, seen from the pixel we move to
        back = _NEIGHBOUR_INDEX[(row + behind[0] - next_row, col + behind[1] - next_col)]
        row, col = next_row, next_col
        outline.append((row - 1, col - 1))


def drop_collinear(outline: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The outline without the pixels where it goes straight on (the polygon is unchanged)."""
    if len(outline) < 3:
        return outline
    kept = []
    for index, here in enumerate(outline):
        before, after = outline[index - 1], outline[(index + 1) % len(outline)]
        incoming = (here[0] - before[0], here[1] - before[1])
        outgoing = (after[0] - here[0], after[1] - here[1])
        if incoming != outgoing:
            kept.append(here)
    return kept
