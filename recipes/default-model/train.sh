#!/usr/bin/env bash
# Reproduce the bundled default model on a CPU machine: generate the synthetic world, pretrain the SAM
# encoder (stage 0), train the small preset through X-SAM's stages with `xsam train` (stage 1
# seg_finetune, stage 2 align_pretrain, stage 2b class-head distillation, stage 3 mixed_finetune),
# evaluate it with `xsam eval --suite synthetic`, plot the loss curves, and package the result (16-bit
# weights) as src/xsam/assets/default-model (docs/default-model/ gets its results, logs and curves).
#
#   recipes/default-model/train.sh [WORK_DIR]          # default WORK_DIR: runs/default-model
#
# The defaults are the settings of the shipped model (about 113 minutes of training and 15 of evaluation
# on 2 CPU cores); override any of them through the environment, e.g. S3_STEPS=3000 train.sh WORK.
# Stage 0 (pretrain_encoder.py, S0_STEPS=0 skips it) pretrains the SAM encoder on the world's shapes,
# our stand-in for SAM's pretrained weights; stage 2b (distill_class_head.py, S2B_STEPS=0 skips it)
# distils stage 1's closed-set head into the LLM's class embeddings. A stage whose WORK/<stage>/final
# exists is skipped, so the script can be rerun to continue. Knobs: SEED and IMAGES (the world), S*_STEPS
# (steps per stage), S1_SAM_LR / S3_LLM_LR / S3_HEAD_LR (learning-rate factors), S1_CLASS_WEIGHT,
# S1_DECAY, S1_JITTER, S3_*_REPEAT (how often stage 3 draws a source), EVAL_LIMIT, PACKAGE=0 (no
# packaging). The recipe's history is in CHANGELOG.md.
set -euo pipefail

WORK=${1:-runs/default-model}
SEED=${SEED:-0}
IMAGES=${IMAGES:-2000}
S0_STEPS=${S0_STEPS:-4000}  # 0: no stage 0, stage 1 starts from random weights
S1_STEPS=${S1_STEPS:-1400}
S1_SAM_LR=${S1_SAM_LR:-0.3}
S1_CLASS_WEIGHT=${S1_CLASS_WEIGHT:-2}
S1_DECAY=${S1_DECAY:-cosine}
S1_JITTER=${S1_JITTER:-0.75,1.25}
S2_STEPS=${S2_STEPS:-100}
S2B_STEPS=${S2B_STEPS:-400}  # 0: no distillation of the closed-set head into the LLM before stage 3
S3_STEPS=${S3_STEPS:-4600}
S3_LLM_LR=${S3_LLM_LR:-0.5}  # stage 3's learning-rate factor on the LLM
S3_HEAD_LR=${S3_HEAD_LR:-1.0}  # and on its output head alone
S3_PANOPTIC_REPEAT=${S3_PANOPTIC_REPEAT:-2}  # how much more often stage 3 draws panoptic samples
S3_GCG_REPEAT=${S3_GCG_REPEAT:-2}  # and GCG samples
S3_REFER_REPEAT=${S3_REFER_REPEAT:-1}  # and referring samples
S3_VGD_REPEAT=${S3_VGD_REPEAT:-2}  # and VGD samples
EVAL_LIMIT=${EVAL_LIMIT:-}  # evaluate only the first N samples of each benchmark (empty: all)
PACKAGE=${PACKAGE:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)

WORLD=$WORK/world
mkdir -p "$WORK"
if [ ! -f "$WORLD/world.json" ]; then
  xsam synth --out "$WORLD" --seed "$SEED" --images "$IMAGES" > "$WORK/synth.log" 2>&1
fi

# A stage whose final model exists is skipped and an interrupted one resumes from its last checkpoint,
# so a rerun (e.g. with more stage-3 steps after deleting WORK/s3) continues where the previous one stopped.
stage() {
  local name=$1
  shift
  if [ -f "$WORK/$name/final/config.json" ]; then
    echo "$name: $WORK/$name/final exists, skipped"
  else
    xsam train "$@" --output "$WORK/$name" --resume >> "$WORK/$name.out" 2>&1
  fi
}

panoptic="coco_panoptic:annotations=panoptic/panoptic_train.json,png_dir=panoptic/panoptic_train,image_dir=images/train,name=synthetic_panoptic"

# Stage 0 (optional): pretrain the SAM encoder to tell the world's shapes apart (the release starts from
# a pretrained SAM; a from-scratch one does not learn shapes in stage 1's budget). Only the training split.
s1_init=(--preset small --num-closed-set-classes 11)
if [ "$S0_STEPS" -gt 0 ]; then
  if [ ! -f "$WORK/s0/final/config.json" ]; then
    python "$HERE/pretrain_encoder.py" "$WORLD" --out "$WORK/s0" --steps "$S0_STEPS" --seed "$SEED" \
      > "$WORK/s0.out" 2>&1
  fi
  s1_init=(--init "$WORK/s0/final")
fi

# Stage 1: the segmentor alone (SAM encoder, connector, pixel and mask decoders) with a closed-set head
# over the world's 11 classes. Everything (but a stage-0 encoder) starts from random weights, so the rate
# is higher than the release's; the encoder moves at S1_SAM_LR of it (Mask2Former's backbone factor).
# S1_DECAY=cosine replaces the preset's step decay, and S1_JITTER a milder scale jitter than the
# release's 0.1-2.0 (made for 1024 px inputs).
stage s1 --stage seg_finetune "${s1_init[@]}" \
  --lr 1e-3 --lr-multiplier segmentation_encoder="$S1_SAM_LR" --decay "$S1_DECAY" --scale-jitter "$S1_JITTER" \
  --class-weight "$S1_CLASS_WEIGHT" --batch-size 4 --num-points 1024 --max-steps "$S1_STEPS" --save-every 500 --seed "$SEED" \
  --data-root "$WORLD" --data "$panoptic"

# Stage 2: only the two projectors, on captions.
stage s2 --stage align_pretrain --init "$WORK/s1/final" --lr 1e-3 \
  --batch-size 4 --max-steps "$S2_STEPS" --seed "$SEED" \
  --data-root "$WORLD" --data "llava:json=llava/pretrain_train.json,image_dir=images/train,name=synthetic_pretrain"

# Stage 2b (optional): distil stage 1's closed-set head into the LLM's <p>name</p> class embeddings, so
# that stage 3 starts with an LLM that tells the classes apart (a from-scratch one collapses the shapes).
s3_init=$WORK/s2/final
if [ "$S2B_STEPS" -gt 0 ]; then
  if [ ! -f "$WORK/s2b/final/config.json" ]; then
    python "$HERE/distill_class_head.py" "$WORK/s2/final" "$WORLD" --out "$WORK/s2b" --steps "$S2B_STEPS" \
      --seed "$SEED" > "$WORK/s2b.out" 2>&1
  fi
  s3_init=$WORK/s2b/final
fi

# Stage 3: every module on the task mixture (LM + segmentation losses). SigLIP learns from scratch at
# 1e-3; stage 1's SAM encoder is frozen (multiplier 0) and the rest of the segmentor moves slower, so that
# what stage 1 learnt is kept; the LLM moves at S3_LLM_LR, which keeps stage 2b's class embeddings, and
# its output head at S3_HEAD_LR, so that the answers' form (GCG's closing <SEG>) is still learnt.
# The S3_*_REPEAT factors draw those sources more often than the mixture's square-root rule.
stage s3 --stage mixed_finetune --init "$s3_init" \
  --lr 1e-3 --lr-multiplier image_encoder=1.0 --lr-multiplier segmentation_encoder=0 \
  --lr-multiplier connector=0.2 --lr-multiplier pixel_decoder=0.2 --lr-multiplier mask_decoder=0.5 \
  --lr-multiplier language_model="$S3_LLM_LR" --lr-multiplier language_model.lm_head="$S3_HEAD_LR" \
  --batch-size 2 --num-points 1024 --max-steps "$S3_STEPS" --save-every 500 --seed "$SEED" \
  --data-root "$WORLD" \
  --data "$panoptic,repeat=$S3_PANOPTIC_REPEAT" \
  --data "refer:dataset_dir=refer,image_dir=images,dataset=refcoco,split=train,name=synthetic_refer,repeat=$S3_REFER_REPEAT" \
  --data "reasonseg:split_dir=reasonseg/train,explanatory=reasonseg/explanatory/train.json,name=synthetic_reasonseg" \
  --data "grandf:json=gcg/gcg_train.json,image_dir=images/train,name=synthetic_gcg,repeat=$S3_GCG_REPEAT" \
  --data "coco_vgd:vgd_json=vgd/vgd_train.json,instances=instances/instances_train.json,image_dir=images/train,name=synthetic_vgd,repeat=$S3_VGD_REPEAT" \
  --data "llava:json=llava/llava_train.json,image_dir=images/train,name=synthetic_llava"

stages=("$WORK/s1" "$WORK/s2")
if [ "$S0_STEPS" -gt 0 ]; then stages=("$WORK/s0" "${stages[@]}"); fi
if [ "$S2B_STEPS" -gt 0 ]; then stages+=("$WORK/s2b"); fi
stages+=("$WORK/s3")
python "$HERE/plot_training.py" "${stages[@]}" --out "$WORK/losses.png"
# GCG generates its caption: the world's training answers take up to 72 tokens (64 cut a tenth of them).
xsam eval --model "$WORK/s3/final" --suite synthetic --data-root "$WORLD" --out "$WORK/eval" \
  --max-new-tokens 128 ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} > "$WORK/eval.out" 2>&1
# Stage 1 alone (its closed-set segmentor, no LLM), to tell the segmentor's errors from the LLM's.
xsam eval --model "$WORK/s1/final" --suite synthetic_closed_set --data-root "$WORLD" --out "$WORK/eval_s1" \
  ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} > "$WORK/eval_s1.out" 2>&1

if [ "$PACKAGE" = 1 ]; then
  python "$HERE/package.py" "$WORK"
fi
