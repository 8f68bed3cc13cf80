"""Interactive segmentation (COCO-Interactive): one visual prompt, one object.

The prompt is the visual-grounding prompt with a single ``<p><region></p>`` (the official ``intseg``
map function delegates to the VGD one); X-SAM never trains on interactive data, the ability comes
from VGD training. Post-processing differs: it keeps the one mask whose box best matches the
prompt's box (:func:`interactive`). Its benchmark prompts every non-crowd instance on its own and
scores the mask IoU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from ..processing import Frame
from . import visual_grounding
from .base import (
    Draft,
    DraftOptions,
    EvalSample,
    MaskTruth,
    Metric,
    Prompt,
    TargetDraft,
    TaskHandler,
    TaskRequest,
)
from .conversation import Turn
from .mask_classification import (
    SCORE_MARGIN,
    MaskResult,
    binary_masks_and_scores,
    box_iou,
    class_probabilities,
    could_reach,
    mask_to_box,
    ranked_entries,
    require_single_class,
)
from .prediction import Prediction
from .records import Record
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


def interactive(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
    prompt_mask: torch.Tensor,
    *,
    threshold: float = 0.5,
) -> MaskResult:
    """Interactive segmentation (official ``intseg_postprocess_fn``): one region prompt, one mask.

    Instance-style scoring over the ``Q`` queries (see :func:`~xsam.tasks.mask_classification.instance`);
    the candidates are the queries with score ``>= threshold`` plus every query equal to the best score;
    among them, in the official ``topk(sorted=False)`` order, the first whose mask box
    (:func:`~xsam.tasks.mask_classification.mask_to_box`) has the highest IoU with the prompt mask's box
    wins.

    Queries are scored in decreasing class probability and the scan stops once no remaining query can
    reach the threshold or the best score, so usually only a handful are upsampled.

    Args:
        prompt_mask: ``(H, W)`` visual prompt in the original frame. For parity pass
            :func:`xsam.processing.restore_prompt_masks` of the canvas prompt (what the official boxes).
        threshold: 0.5 in evaluation.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    require_single_class(probabilities, "interactive segmentation")
    if tuple(prompt_mask.shape) != tuple(frame.original_size):
        raise ValueError(f"prompt_mask must be {tuple(frame.original_size)}, got {tuple(prompt_mask.shape)}")
    top_probabilities, _, queries = ranked_entries(probabilities, None)
    scores, masks = _scores_that_matter(top_probabilities, queries, mask_logits, frame, threshold)
    positions = sorted(scores)
    values = torch.tensor([scores[position] for position in positions], dtype=torch.float32)
    # NaN scores (degenerate logits) must not empty the candidate set: rank them last
    values = torch.nan_to_num(values, nan=float("-inf"))
    # float32 tensor comparisons, as the official ``(scores >= threshold) | (scores == scores.max())``
    keep = ((values >= threshold) | (values == values.max())).tolist()
    candidates = [position for position, kept in zip(positions, keep, strict=True) if kept]
    boxes = mask_to_box(torch.stack([masks[position] for position in candidates]))
    prompt_box = mask_to_box(prompt_mask)[None].to(boxes.device)
    choice = candidates[int(box_iou(boxes, prompt_box).argmax(dim=0))]
    return MaskResult(masks[choice], scores[choice], int(queries[choice]))


def _scores_that_matter(
    top_probabilities: torch.Tensor,
    queries: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
    threshold: float,
) -> tuple[dict[int, float], dict[int, torch.Tensor]]:
    """Instance scores and masks, keyed by ranked position, of every entry that can be >= ``threshold``
    or equal to the best score; entries left out score strictly below both (score <= probability)."""
    scores: dict[int, float] = {}
    masks: dict[int, torch.Tensor] = {}

    def score(positions: list[int]) -> None:
        index = torch.tensor(positions, dtype=torch.int64, device=queries.device)
        binary, mean_probability = binary_masks_and_scores(mask_logits, queries[index], frame)
        values = (top_probabilities[index] * mean_probability).tolist()
        for position, mask, value in zip(positions, binary, values, strict=True):
            scores[position], masks[position] = value, mask

    score(torch.nonzero(could_reach(top_probabilities, threshold)).flatten().tolist())
    remaining = [p for p in top_probabilities.argsort(descending=True).tolist() if p not in scores]
    step = 8
    for start in range(0, len(remaining), step):
        best = max(scores.values(), default=float("-inf"))
        # Probabilities bound the scores; once the next one is below the best score, none can tie it.
        if top_probabilities[remaining[start]].item() < best * (1 - SCORE_MARGIN):
            break
        score(remaining[start : start + step])
    return scores, masks


class InteractiveHandler(TaskHandler):
    """Interactive segmentation: one point, box, scribble or mask in, the object it marks out."""

    name = "interactive"
    official_name = "intseg"
    accepts = frozenset({"points", "boxes", "scribbles", "masks"})
    region_prompts = True
    score_threshold = 0.5
    demo_score_threshold = 0.5
    metrics = (Metric.MASK_IOU,)
    questions = (visual_grounding.QUESTIONS,)
    answers = visual_grounding.ANSWERS

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        regions = visual_grounding.required_regions(prompt, image_size, self.name)
        if len(regions) != 1:
            raise ValueError(f"interactive segmentation takes exactly one visual prompt, got {len(regions)}")
        return TaskRequest(self.name, build_prompt(), ["region 0"], region_masks=regions)

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        threshold = self.demo_score_threshold if threshold is None else threshold
        prompt = request.region_masks[0]
        result = interactive(class_logits, mask_logits, frame, prompt, threshold=threshold)
        return Prediction(self.name, result.mask[None].cpu(), request.labels, [float(result.score)])

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """The prompted instance: a random promptable one in training, the first in evaluation."""
        candidates = [
            (segment, prompt)
            for segment in record.segments
            if not segment.iscrowd
            and (prompt := visual_grounding.drawn_prompt(segment, rng, train, options)) is not None
        ]
        if not candidates:
            raise ValueError(f"interactive record {record.image_id!r} has no instance with a visual prompt")
        segment, prompt = rng.choice(candidates) if train else candidates[0]
        turns = sample_prompt(rng) if train else build_prompt()
        target = TargetDraft([0], [segment.mask.decode()])
        return Draft(turns, [target], region_prompts=[prompt], class_names=[segment.category])

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """One sample per instance with a non-empty prompt of the benchmark's ``prompt_kind``."""
        kind = options["prompt_kind"]
        samples = []
        for record in records:
            for index, segment in enumerate(record.segments):
                prompt = visual_grounding.segment_prompt(segment, kind)
                if prompt is None:
                    continue
                truth = MaskTruth([segment.mask], record.height, record.width)
                request = {"task": self.name, "masks": prompt[None], "threshold": self.score_threshold}
                key = f"{record.image_id}_{index}"
                samples.append(EvalSample(key, record.image_path, record.image_id, request, truth))
        return samples


INTERACTIVE = InteractiveHandler()
