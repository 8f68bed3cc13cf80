"""X-SAM's segmentation loss: Mask2Former's Hungarian matching and point-sampled mask losses.

* :mod:`.point_sampling` — ``grid_sample`` on normalised points, PointRend importance sampling and
  the injectable random sources (``TorchRandom``, ``ReplayRandom``, ``RecordingRandom``) that let a
  run replay the official implementation's ``torch.rand`` draws.
* :mod:`.matcher` — per-sample bipartite matching of queries to ground-truth masks.
* :mod:`.criterion` — :class:`SegmentationCriterion`, the loss dictionary over the final and every
  auxiliary decoder prediction.

Importing this package does not import scipy; matching does, on first use.
"""

from ..processing import SegmentationTarget
from .criterion import CriterionOutput, SegmentationCriterion, count_target_masks
from .matcher import hungarian_match
from .point_sampling import (
    RandomSource,
    RecordingRandom,
    ReplayRandom,
    TorchRandom,
    point_sample,
    uncertain_points,
)

__all__ = [
    "CriterionOutput",
    "RandomSource",
    "RecordingRandom",
    "ReplayRandom",
    "SegmentationCriterion",
    "SegmentationTarget",
    "TorchRandom",
    "count_target_masks",
    "hungarian_match",
    "point_sample",
    "uncertain_points",
]
