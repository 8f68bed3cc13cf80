"""Teach the LLM's class embeddings what stage 1's closed-set head knows (between stages 2 and 3).

    python recipes/default-model/distill_class_head.py WORK/s2/final WORLD --out WORK/s2b --steps 400

In stage 1 the segmentor learns to classify its queries with a closed-set linear head over the world's
classes; from stage 3 on, the same queries are classified by cosine similarity with the LLM's
``<p>name</p>`` states (after the llm_projector), and the ``<SEG>`` state is added to every query. A
from-scratch LLM starts stage 3 knowing neither, and there it learns to tell things from stuff but
collapses the six shape names onto one embedding (docs/default-model.md, "Limits"). The
release does not have this problem: its LLM is pretrained and its embeddings of different words
differ from the start.

This script distils the closed-set head into the LLM path on the training split's panoptic samples,
with the prompts of stage 3 (sampled, shuffled category lists): the teacher is the frozen segmentor
with its closed-set head (no ``<SEG>`` offset), restricted to the prompt's classes and no-object; the
student is the same segmentor classified through the LLM (``<SEG>`` offset, cosine head against the
condition states). The loss is the KL divergence of the student's class distribution from the
teacher's, for every query and decoder layer, plus a binary cross-entropy that keeps the student's
masks at the teacher's (so the ``<SEG>`` offset learns not to disturb them). Only the LLM, the
llm_projector and the class head (logit scale, background embedding) learn; SAM, SigLIP, the
projectors, connector and decoders are frozen.

Writes ``OUT/final`` (a ``save_pretrained`` model for ``xsam train --stage mixed_finetune --init``)
and ``OUT/log.jsonl`` (losses, and how often the student's arg-max class of a query equals the
teacher's, over the queries the teacher calls foreground).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xsam.data.collate import collate
from xsam.data.samples import SampleOptions
from xsam.data.sources import RecordDataset, load_records, parse_dataset_spec
from xsam.modeling.pretrained import copy_tokenizer, tokenizer_directory
from xsam.modeling.xsam import XSamModel
from xsam.tokens import load_tokenizer

PANOPTIC = (
    "coco_panoptic:annotations=panoptic/panoptic_train.json,png_dir=panoptic/panoptic_train,"
    "image_dir=images/train,name=synthetic_panoptic"
)
TRAINED = ("language_model", "llm_projector", "class_head")


def teacher_targets(
    closed_logits: torch.Tensor, class_names: list[list[str]], dataset_names: list[str], width: int
) -> torch.Tensor:
    """Closed-set logits ``(P, B, Q, K + 1)`` -> teacher probabilities ``(P, B, Q, width)`` over each
    sample's listed classes (prompt order, zero-padded to ``width - 1``) and no-object (last column)."""
    index = {name: i for i, name in enumerate(dataset_names)}
    no_object = closed_logits.shape[-1] - 1
    targets = closed_logits.new_zeros(*closed_logits.shape[:-1], width)
    for b, names in enumerate(class_names):
        columns = [index[name] for name in names] + [no_object]
        probabilities = closed_logits[:, b][..., columns].softmax(-1)
        targets[:, b, :, : len(names)] = probabilities[..., :-1]
        targets[:, b, :, -1] = probabilities[..., -1]
    return targets


def distillation_losses(
    model: XSamModel, batch, dataset_names: list[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL of the LLM-path class distribution from the closed-set one, and the masks' BCE."""
    inputs = batch.model_inputs()
    with torch.no_grad():
        features = model.encode_image(inputs["pixel_values"], inputs["sam_pixel_values"])
        closed_logits, closed_masks = model.decode_closed_set(
            features.multi_scale_features, features.mask_features
        )
    output = model(**inputs, image_features=features, labelled_logits_only=True)
    segmentation = output.segmentation
    if segmentation is None:
        raise ValueError("a panoptic batch produced no segmentation (no <SEG> in its prompts)")
    student = segmentation.class_logits.float()  # (P, B, Q, C + 1), padded columns at -1e9
    names = [meta["class_names"] for meta in batch.meta]
    teacher = teacher_targets(closed_logits.float(), names, dataset_names, student.shape[-1])
    log_student = student.log_softmax(-1)
    kl = (teacher * (teacher.clamp(min=1e-8).log() - log_student)).sum(-1).mean()
    mask_bce = F.binary_cross_entropy_with_logits(
        segmentation.mask_logits.float(), closed_masks.float().sigmoid()
    )
    with torch.no_grad():
        foreground = teacher[-1].argmax(-1) != teacher.shape[-1] - 1
        agree = (student[-1].argmax(-1) == teacher[-1].argmax(-1))[foreground].float().mean()
    loss = kl + mask_bce
    parts = {
        "loss": loss.item(),
        "loss_kl": kl.item(),
        "loss_mask": mask_bce.item(),
        "agreement": agree.item(),
    }
    return loss, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the stage-2 model (with stage 1's closed-set head)")
    parser.add_argument("world", type=Path, help="an `xsam synth` output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be positive")

    torch.manual_seed(args.seed)
    model = XSamModel.from_pretrained(args.model).train()
    if model.closed_set_head is None:
        parser.error(f"{args.model}: has no closed-set head (distil from a stage-1 or stage-2 model)")
    tokenizer = load_tokenizer(tokenizer_directory(args.model), tokens=model.config.tokens)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in TRAINED)
    parameters = [p for p in model.parameters() if p.requires_grad]

    spec = parse_dataset_spec(PANOPTIC)
    records = load_records(spec, data_root=args.world)
    dataset_names = [name for name, _ in records[0].categories]
    if len(dataset_names) + 1 != model.closed_set_head.classifier.out_features:
        parser.error(
            f"the world has {len(dataset_names)} classes, the closed-set head "
            f"{model.closed_set_head.classifier.out_features - 1}"
        )
    dataset = RecordDataset(
        records,
        model.config,
        tokenizer,
        train=True,
        seed=args.seed,
        source=spec.name,
        options=SampleOptions(),
    )
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)

    def rate(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    order = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id
    start = time.time()
    window: list[dict[str, float]] = []
    with (args.out / "log.jsonl").open("w") as log:
        for step in range(args.steps):
            batch = collate(
                [dataset[order.randrange(len(dataset))] for _ in range(args.batch_size)], pad_token_id=pad
            )
            loss, parts = distillation_losses(model, batch, dataset_names)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, 1.0))
            optimizer.step()
            scheduler.step()
            window.append(parts)
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
                mean = {key: sum(p[key] for p in window) / len(window) for key in window[0]}
                row = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, **mean}
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(
                    f"step {step + 1}/{args.steps} kl {mean['loss_kl']:.3f} mask {mean['loss_mask']:.3f} "
                    f"agreement {mean['agreement']:.2f} ({time.time() - start:.0f} s)",
                    flush=True,
                )
                window = []
    model.eval().save_pretrained(args.out / "final")
    copy_tokenizer(args.model, args.out / "final")
    print(f"wrote {args.out / 'final'}")


if __name__ == "__main__":
    main()
