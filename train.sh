#!/usr/bin/env bash
# The paper's training protocol (SPEC §5): one model trained on MVTec AD's annotated test split
# (used to evaluate every other dataset), one on VisA's (used to evaluate MVTec AD).
# Edit the variables below, or set them in the environment: DATA_ROOT=/data bash train.sh
set -euo pipefail

DATA_ROOT=${DATA_ROOT:-./data}                 # holds mvtec/ and visa/, each with its meta.json
CLIP_WEIGHTS=${CLIP_WEIGHTS:-openai}           # ViT-L-14-336px.pt, a state dict, or 'openai'
CHECKPOINTS=${CHECKPOINTS:-./checkpoints}      # epoch_{n}.pth land in $CHECKPOINTS/{mvtec,visa}_train/
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}                   # fp32 reproduces the reference; bf16 is faster on a GPU
EXTRA_ARGS=${EXTRA_ARGS:-}                     # e.g. "--fix_quirks" or "--cache_features off"

for auxiliary in mvtec visa; do
    python train.py \
        --dataset "$auxiliary" \
        --train_data_path "$DATA_ROOT/$auxiliary" \
        --save_path "$CHECKPOINTS/${auxiliary}_train" \
        --clip_weights "$CLIP_WEIGHTS" \
        --features_list 6 12 18 24 --image_size 518 --n_ctx 7 --n_cls 3 --topk 50 \
        --epoch 10 --learning_rate 0.001 --batch_size 8 --seed 111 --save_freq 1 \
        --device "$DEVICE" --precision "$PRECISION" $EXTRA_ARGS
done
