"""Adding a task is one module and one table row: a toy task registered here runs through the predictor,
training-sample building, ``xsam eval``'s runner and ``xsam score``'s dispatch without touching them
(``docs/adding-a-task.md`` walks through the same code)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from xsam.config import XSamConfig
from xsam.data.collate import collate
from xsam.data.samples import build_sample
from xsam.eval.benchmarks import Benchmark
from xsam.eval.evaluate import evaluate_benchmark
from xsam.eval.score import score_metric
from xsam.inference.predictor import XSamPredictor
from xsam.processing import Frame
from xsam.tasks.base import (
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
from xsam.tasks.conversation import Turn
from xsam.tasks.prediction import Prediction
from xsam.tasks.records import Mask, Record, Segment
from xsam.tasks.referring import referring
from xsam.tasks.registry import TASKS, register_task, task_handler
from xsam.tasks.templates import TemplateList, place_image, wrap_phrase

# ------------------------------------------------------------------------------ the task's module
QUESTIONS = TemplateList("centre questions", ("Please segment {target} in this image.",), official_size=1)
ANSWERS = TemplateList("centre answers", ("<SEG>.",), official_size=1)


def build_prompt() -> list[Turn]:
    return [
        Turn(place_image(QUESTIONS.render(0, target=wrap_phrase("the centre object"))), ANSWERS.render(0))
    ]


class CentreHandler(TaskHandler):
    """Segment the object at the image centre: no arguments, one mask."""

    name = "centre"
    official_name = "ctrseg"
    mask_threshold = 0.5
    metrics = (Metric.MASK_IOU,)
    questions = (QUESTIONS,)
    answers = ANSWERS
    templates = (QUESTIONS, ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        return TaskRequest(self.name, build_prompt(), ["centre"])

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        result = referring(class_logits, mask_logits, frame, mask_threshold=self.mask_threshold)
        return Prediction(self.name, result.mask[None], request.labels, [result.score])

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        return Draft(
            build_prompt(), [TargetDraft([0], [record.segments[0].mask.decode()])], class_names=["centre"]
        )

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        return [
            EvalSample(
                str(record.image_id),
                record.image_path,
                record.image_id,
                {"task": self.name},
                MaskTruth([record.segments[0].mask], record.height, record.width),
            )
            for record in records
        ]


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture
def centre_task():
    """The toy task's table row, removed again after the test."""
    handler = register_task(CentreHandler())
    yield handler
    del TASKS[handler.name]


@pytest.fixture
def centre_records(tmp_path: Path) -> list[Record]:
    records = []
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        path = tmp_path / f"{index}.png"
        Image.fromarray(pixels).save(path)
        mask = np.zeros((24, 32), dtype=bool)
        mask[8:16, 10:22] = True
        segment = Segment(Mask.from_array(mask), "centre object")
        records.append(Record("centre", path, 24, 32, image_id=index, segments=[segment]))
    return records


def test_the_table_finds_a_registered_task_by_name_and_official_name(centre_task):
    assert task_handler("centre") is centre_task and task_handler("ctrseg") is centre_task
    with pytest.raises(ValueError, match="exists already"):
        register_task(CentreHandler())


def test_the_predictor_runs_a_registered_task(centre_task, tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(np.zeros((24, 32, 3), dtype=np.uint8))
    prediction = predictor.predict("centre")
    assert prediction.task == "centre" and prediction.labels == ["centre"]
    assert prediction.masks.shape == (1, 24, 32) and prediction.masks.dtype == torch.bool
    with pytest.raises(ValueError, match="task 'centre' takes no text"):
        predictor.predict("centre", text="the middle")


def test_training_samples_of_a_registered_task(centre_task, centre_records, tokenizer):
    config = XSamConfig.tiny()
    sample = build_sample(centre_records[0], config, tokenizer, random.Random(0), train=True)
    assert sample.task == "centre" and sample.num_conditions == 1
    assert int((sample.seg_ids >= 0).sum()) == 1
    (target,) = sample.targets
    canvas = config.segmentation_encoder.image_size
    assert target.labels.tolist() == [0] and target.masks.shape == (1, canvas, canvas)
    assert target.masks.sum() > 0
    batch = collate([sample, sample], pad_token_id=0)
    assert batch.task == "centre" and len(batch.targets) == 2


def test_evaluation_and_scoring_of_a_registered_task(centre_task, centre_records, tiny_model, tokenizer):
    benchmark = Benchmark(
        "centre_toy", "centre", Metric.MASK_IOU, {}, headline="giou", reader=lambda b, paths: centre_records
    )
    result = evaluate_benchmark(XSamPredictor(tiny_model, tokenizer), benchmark, progress=False)
    assert result.task == "centre" and result.num_samples == 2
    assert set(result.metrics) >= {"ciou", "giou"} and 0 <= result.metrics["giou"] <= 1
    assert result.protocol["question_templates"] == [QUESTIONS.get(0)]
    assert score_metric("centre") is Metric.MASK_IOU
