"""Interactive segmentation (COCO-Interactive) prompts: one visual prompt, one object.

The prompt is the visual-grounding prompt with a single ``<p><region></p>`` (the official
``intseg`` map function delegates to the VGD one); X-SAM never trains on interactive data, the
ability comes from VGD training. Post-processing differs: it keeps the one mask whose box best
matches the prompt's box.
"""

from __future__ import annotations

import random

from . import visual_grounding
from .conversation import Turn
from .templates import TemplateChoice


def build_prompt(
    *, question_template: TemplateChoice = 0, answer_template: TemplateChoice | None = 0
) -> list[Turn]:
    """The VGD prompt over one region; indices refer to the visual-grounding template lists, and
    custom template strings are accepted as in :func:`xsam.tasks.visual_grounding.build_prompt`."""
    return visual_grounding.build_prompt(
        1, question_template=question_template, answer_template=answer_template
    )


def sample_prompt(rng: random.Random) -> list[Turn]:
    """Prompt with templates drawn with ``rng``."""
    return visual_grounding.sample_prompt(1, rng)
