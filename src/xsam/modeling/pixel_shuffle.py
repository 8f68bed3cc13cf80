"""Pixel shuffle with the exact channel orderings of the official X-SAM checkpoint.

Two directions are used, and they are *not* inverses of each other:

* downsample by ``r`` (factor ``1/r``, space-to-depth), channels-last ``(B, H, W, C)`` ->
  ``(B, H/r, W/r, r²C)`` with ``out[b, i, j, d·rC + a·C + c] = x[b, r·i + d, r·j + a, c]``: the row offset
  ``d`` is the major channel block.
* upsample by ``r`` (factor ``r``, depth-to-space), ``(B, H, W, C)`` -> ``(B, rH, rW, C/r²)`` with
  ``out[b, r·h + d, r·w + a, e] = x[b, h, w, a·(C/r) + d·(C/r²) + e]``: the column offset ``a`` is the
  major channel block.

Odd sizes are zero-padded at the bottom/right before downsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _integer_ratio(factor: float) -> tuple[int, bool]:
    """Return ``(r, upsample)`` for ``factor`` in ``{1/r, 1, r}``."""
    if factor >= 1:
        ratio, upsample = factor, True
    else:
        ratio, upsample = 1 / factor, False
    if abs(ratio - round(ratio)) > 1e-6:
        raise ValueError(f"pixel-shuffle factor must be an integer or its inverse, got {factor}")
    return round(ratio), upsample


def pixel_shuffle(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Pixel-shuffle a channels-last map ``(B, H, W, C)`` by ``factor`` (0.5, 1, 2, ...)."""
    ratio, upsample = _integer_ratio(factor)
    if ratio == 1:
        return x
    batch, height, width, channels = x.shape
    if upsample:
        if channels % (ratio * ratio):
            raise ValueError(f"cannot upsample {channels} channels by {ratio}")
        inner = channels // (ratio * ratio)
        # channel index = a·(C/r) + d·(C/r²) + e  ->  axes (a, d, e)
        x = x.reshape(batch, height, width, ratio, ratio, inner)
        x = x.permute(0, 1, 4, 2, 3, 5)  # (B, H, d, W, a, e)
        return x.reshape(batch, height * ratio, width * ratio, inner)
    pad_h, pad_w = (-height) % ratio, (-width) % ratio
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        height, width = height + pad_h, width + pad_w
    x = x.reshape(batch, height // ratio, ratio, width // ratio, ratio, channels)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, i, j, d, a, c)
    return x.reshape(batch, height // ratio, width // ratio, ratio * ratio * channels)


def pixel_shuffle_channels_first(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The same mapping on a channels-first map ``(B, C, H, W)``."""
    return pixel_shuffle(x.permute(0, 2, 3, 1), factor).permute(0, 3, 1, 2)
