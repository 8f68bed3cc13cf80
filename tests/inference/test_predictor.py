"""XSamPredictor: cached prompts equal uncached full forwards, encoders run once per image, clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from xsam.cli import main
from xsam.config import XSamConfig
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel
from xsam.processing import preprocess_sam
from xsam.tasks import Task

IMAGE = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)

# one request per task; thresholds 0 so random weights still give masks to compare
REQUESTS = {
    Task.GENERIC: {"categories": "ins: dog, cat; sem: sky", "threshold": 0.0},
    Task.OPEN_VOCAB: {"categories": ["road, route", "tree"], "threshold": 0.0},
    Task.REFERRING: {"text": "the dog on the left"},
    Task.REASONING: {"text": "What would keep the astronaut's head safe?"},
    Task.GCG: {"max_new_tokens": 8},
    Task.INTERACTIVE: {"boxes": [[10, 10, 60, 50]]},
    Task.VGD: {"points": [[30, 40]], "scribbles": [[[5, 5], [40, 40], [60, 20]]], "threshold": 0.0},
    Task.CHAT: {"text": "What is in the image?", "max_new_tokens": 6},
}


class _ScriptedHead(nn.Module):
    """Makes generation emit '<p> A dog </p> <SEG> <|end|>' so GCG has phrases and a mask."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


@pytest.fixture
def scripted_generation(tiny_model, tokenizer):
    tokens = tiny_model.config.tokens
    words = tokenizer.encode("A dog", add_special_tokens=False)
    script = [tokens.phrase_start_token_id, *words, tokens.phrase_end_token_id, tokens.seg_token_id, 32007]
    original = tiny_model.language_model.lm_head

    def install():
        tiny_model.language_model.lm_head = _ScriptedHead(script, tiny_model.config.language_model.vocab_size)

    yield install
    tiny_model.language_model.lm_head = original


def _compare(cached, uncached):
    assert cached.labels == uncached.labels
    assert cached.text == uncached.text
    if cached.logits is None:
        assert uncached.logits is None
        return
    for name in ("class_logits", "mask_logits"):
        torch.testing.assert_close(
            getattr(cached.logits, name), getattr(uncached.logits, name), atol=1e-5, rtol=0
        )
    assert torch.equal(cached.masks, uncached.masks)


@pytest.mark.parametrize("task", list(Task))
def test_cached_prediction_equals_uncached_full_forward(tiny_model, tokenizer, task, scripted_generation):
    results = []
    for use_cache in (True, False):
        if task is Task.GCG:
            scripted_generation()
        predictor = XSamPredictor(tiny_model, tokenizer, use_cache=use_cache)
        predictor.set_image(IMAGE)
        results.append(predictor.predict(task, **REQUESTS[task]))
    _compare(*results)
    if task is Task.GCG:
        assert results[0].phrases == ["A dog"] and results[0].labels == ["A dog"]
        assert results[0].masks.shape == (1, 90, 120)


def test_encoders_and_prefill_run_once_per_image(tiny_model, tokenizer, monkeypatch):
    calls = {"encode": 0}
    original = tiny_model.encode_image

    def counting(*args, **kwargs):
        calls["encode"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode_image", counting)
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(IMAGE)
    for task in Task:
        predictor.predict(task, **REQUESTS[task])
    assert calls["encode"] == 1
    assert (predictor.stats.image_encodings, predictor.stats.prefills, predictor.stats.prompts) == (1, 1, 8)
    # the cache is back at the prefix after every prompt
    assert predictor._state.cache.get_seq_length() == 2 + tiny_model.config.num_image_tokens


def test_prompts_do_not_leak_into_each_other(tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(IMAGE)
    first = predictor.predict("referring", text="the cat")
    predictor.predict("generic", categories="ins: a, b, c; sem: d", threshold=0.0)
    again = predictor.predict("referring", text="the cat")
    assert torch.equal(first.logits.mask_logits, again.logits.mask_logits)


def test_reasoning_template_follows_is_sentence(tiny_model, tokenizer, monkeypatch):
    from xsam.tasks import reasoning

    chosen = []
    build = reasoning.build_prompt
    monkeypatch.setattr(
        reasoning,
        "build_prompt",
        lambda text, **kw: chosen.append(kw["is_sentence"]) or build(text, **kw),
    )
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(IMAGE)
    predictor.predict("reasoning", text="the thing", is_sentence=True)
    predictor.predict("reasoning", text="What would a cat sit on in this picture?", is_sentence=False)
    predictor.predict("reasoning", text="What would a cat sit on in this picture?")  # guessed: a sentence
    assert chosen == [True, False, True]


def test_chat_keeps_history_until_reset(tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(IMAGE)
    predictor.predict("chat", text="Hello", max_new_tokens=3)
    predictor.predict("chat", text="And then?", max_new_tokens=3)
    assert [turn.question for turn in predictor._chat_history] == ["<image>\nHello", "And then?"]
    predictor.reset_chat()
    assert predictor._chat_history == []


def test_clear_errors(tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("referring", text="x")
    predictor.set_image(IMAGE)
    with pytest.raises(ValueError, match="needs text"):
        predictor.predict("referring")
    with pytest.raises(ValueError, match="takes no visual prompts"):
        predictor.predict("referring", text="x", points=[[1, 1]])
    with pytest.raises(ValueError, match="exactly one visual prompt"):
        predictor.predict("interactive", points=[[1, 1], [5, 5]])
    with pytest.raises(ValueError, match="needs a visual prompt"):
        predictor.predict("vgd")
    with pytest.raises(ValueError, match="categories"):
        predictor.predict("generic")
    with pytest.raises(ValueError, match="takes no text"):
        predictor.predict("generic", categories="ins: a", text="x")
    with pytest.raises(ValueError, match="valid"):
        predictor.predict("segment-everything")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        predictor.predict("interactive", masks=np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="is_sentence= applies to reasoning only"):
        predictor.predict("referring", text="x", is_sentence=True)
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="no image"):
        predictor.predict("referring", text="x")


def test_image_inputs_of_any_kind(tiny_model, tokenizer, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(IMAGE).save(path)
    predictor = XSamPredictor(tiny_model, tokenizer)
    results = []
    for image in (str(path), Image.fromarray(IMAGE).convert("RGBA"), IMAGE):
        predictor.set_image(image)
        results.append(predictor.predict("referring", text="x").logits.mask_logits)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    predictor.set_image(IMAGE[..., 0])  # grayscale works too
    assert predictor.predict("referring", text="x").masks.shape == (1, 90, 120)


def test_prediction_serialises_to_coco_rle(tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    predictor.set_image(IMAGE)
    prediction = predictor.predict("vgd", **REQUESTS[Task.VGD])
    entries = prediction.to_coco(image_id=7)
    assert len(entries) == len(prediction.masks) > 0
    for entry, mask in zip(entries, prediction.masks, strict=True):
        rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy())
        assert entry["image_id"] == 7
    data = json.loads(prediction.to_json())
    assert data["task"] == "vgd" and data["image_size"] == [90, 120]


def test_predict_many_encodes_each_image_once(tiny_model, tokenizer):
    predictor = XSamPredictor(tiny_model, tokenizer)
    requests = [{"task": "referring", "text": "a"}, {"task": "interactive", "points": [[3, 3]]}]
    results = predictor.predict_many([IMAGE, IMAGE[::-1]], requests, progress=False)
    assert [len(r) for r in results] == [2, 2]
    assert predictor.stats.image_encodings == 2


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_model, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model.tokenizer = tokenizer
    tiny_model.save_pretrained(folder)
    tiny_model.tokenizer = None
    return folder


CLI_ARGS = {
    "generic": ["--categories", "ins: dog; sem: sky", "--threshold", "0"],
    "open_vocab": ["--categories", "ins: tree", "--threshold", "0"],
    "referring": ["--text", "the dog"],
    "reasoning": ["--text", "what can fly?"],
    "gcg": ["--max-new-tokens", "4"],
    "interactive": ["--point", "30,40"],
    "vgd": ["--box", "10,10,50,60", "--scribble", "5,5;40,40", "--threshold", "0"],
    "chat": ["--text", "hi", "--max-new-tokens", "4"],
}


@pytest.mark.parametrize("task", list(CLI_ARGS))
def test_cli_predict_writes_png_and_json(saved_tiny, tmp_path, task):
    image = tmp_path / "photo.jpg"
    Image.fromarray(IMAGE).save(image)
    out = tmp_path / "out"
    args = ["predict", "--model", str(saved_tiny), "--image", str(image), "--task", task, "--out", str(out)]
    assert main(args + CLI_ARGS[task]) == 0
    png = Image.open(out / f"photo_{task}.png")
    assert png.width == 120 and png.height >= 90
    record = json.loads((out / f"photo_{task}.json").read_text())
    assert record["task"] == task and record["image"] == str(image)


def test_cli_predict_reports_bad_input(saved_tiny, tmp_path, capsys):
    assert (
        main(["predict", "--model", str(saved_tiny), "--image", str(tmp_path / "nope.jpg"), "--task", "gcg"])
        == 2
    )
    assert "image not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(saved_tiny), "--image", "x", "--task", "vgd", "--box", "1,2,3"])
    assert main(["predict", "--model", str(saved_tiny), "--task", "gcg"]) == 2
    assert "--image required (or --examples)" in capsys.readouterr().err


def test_cli_examples_run_every_task_on_the_bundled_images(saved_tiny, tmp_path, example_requests):
    """``xsam predict --examples``: the README's main command (here with a tiny model)."""
    out = tmp_path / "examples"
    assert main(["predict", "--examples", "--model", str(saved_tiny), "--out", str(out)]) == 0
    tasks = {request["task"] for _, request in example_requests}
    assert tasks == set(CLI_ARGS)  # every task, chat and open-vocabulary included
    for name, request in example_requests:
        assert Image.open(out / f"{name}.png").width >= 256
        assert json.loads((out / f"{name}.json").read_text())["request"] == request
    sheet = Image.open(out / "examples.png")
    assert sheet.width == 4 * 256 and sheet.height > 2 * 256


def test_gcg_with_a_seg_but_no_phrase_returns_no_masks(tiny_model, tokenizer):
    """A generated '<SEG>' with no '<p>…</p>' before it grounds nothing (it used to raise)."""
    tokens = tiny_model.config.tokens
    script = [*tokenizer.encode("A dog", add_special_tokens=False), tokens.seg_token_id, 32007]
    original = tiny_model.language_model.lm_head
    tiny_model.language_model.lm_head = _ScriptedHead(script, tiny_model.config.language_model.vocab_size)
    try:
        predictor = XSamPredictor(tiny_model, tokenizer)
        predictor.set_image(IMAGE)
        prediction = predictor.predict("gcg", max_new_tokens=8)
    finally:
        tiny_model.language_model.lm_head = original
    assert "<SEG>" in prediction.raw_text and prediction.phrases == []
    assert prediction.masks.shape == (0, *IMAGE.shape[:2])


@pytest.fixture(scope="module")
def stage_one_model():
    """A tiny model with a 3-class closed-set head, as stage 1 (seg_finetune) trains it."""
    config = XSamConfig.tiny()
    config.mask_decoder.num_closed_set_classes = 3
    torch.manual_seed(0)
    return XSamModel(config).eval()


def test_closed_set_prediction_runs_the_stage_one_segmentor(stage_one_model, tokenizer, monkeypatch):
    """``closed_set=True`` decodes with the closed-set head (no LLM): its logits are those of
    ``segment_closed_set`` on the same image; instance segmentation keeps the head's first classes."""
    predictor = XSamPredictor(stage_one_model, tokenizer)
    predictor.set_image(IMAGE)

    def no_llm(*args, **kwargs):
        raise AssertionError("the closed-set segmentor must not run the LLM")

    monkeypatch.setattr(stage_one_model, "run_language_model", no_llm)
    with pytest.raises(AssertionError, match="must not run the LLM"):  # the patch does catch the LLM
        predictor.predict("generic", categories="ins: a, b; sem: c")
    panoptic = predictor.predict("generic", categories="ins: a, b; sem: c", closed_set=True, threshold=0.0)
    sam = preprocess_sam(IMAGE, stage_one_model.config.segmentation_encoder).pixel_values[None]
    with torch.no_grad():
        class_logits, mask_logits = stage_one_model.segment_closed_set(sam)
    torch.testing.assert_close(panoptic.logits.class_logits, class_logits)
    torch.testing.assert_close(panoptic.logits.mask_logits, mask_logits)
    assert panoptic.segmentation is not None and set(panoptic.labels) <= {"a", "b", "c"}
    instance = predictor.predict("generic", categories="ins: a, b", closed_set=True, threshold=0.0)
    kept = instance.logits.class_logits
    assert kept.shape[-1] == 3  # classes a, b and "no object"
    torch.testing.assert_close(kept, class_logits[..., [0, 1, 3]])
    assert set(instance.labels) <= {"a", "b"}


def test_closed_set_prediction_errors(stage_one_model, tiny_model, tokenizer):
    predictor = XSamPredictor(stage_one_model, tokenizer)
    predictor.set_image(IMAGE)
    with pytest.raises(ValueError, match="head has 3 classes but 2 categories"):
        predictor.predict("generic", categories="ins: a; sem: b", closed_set=True)
    with pytest.raises(ValueError, match="generic segmentation only"):
        predictor.predict("referring", text="x", closed_set=True)
    plain = XSamPredictor(tiny_model, tokenizer)
    plain.set_image(IMAGE)
    with pytest.raises(ValueError, match="closed-set head"):
        plain.predict("generic", categories="ins: a, b; sem: c", closed_set=True)
