#!/usr/bin/env bash
# The paper's evaluation protocol (SPEC §6, §11): the MVTec-trained model on every other dataset,
# the VisA-trained model on MVTec AD, then the tables beside the paper's numbers.
# Datasets without $DATA_ROOT/NAME/meta.json are skipped with a note.
# Edit the variables below, or set them in the environment: DATA_ROOT=/data bash test.sh
set -euo pipefail

DATA_ROOT=${DATA_ROOT:-./data}                 # one folder per dataset, named as below, each with meta.json
CLIP_WEIGHTS=${CLIP_WEIGHTS:-openai}           # ViT-L-14-336px.pt, a state dict, or 'openai'
CHECKPOINTS=${CHECKPOINTS:-./checkpoints}
MVTEC_CHECKPOINT=${MVTEC_CHECKPOINT:-$CHECKPOINTS/mvtec_train/epoch_10.pth}   # or the released mvtec_train_epoch_10.pth
VISA_CHECKPOINT=${VISA_CHECKPOINT:-$CHECKPOINTS/visa_train/epoch_10.pth}      # or the released visa_train_epoch_10.pth
RESULTS=${RESULTS:-./results}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}
PRO_MODE=${PRO_MODE:-official}                 # 'official' (the paper's AUPRO) or 'exact'
EXTRA_ARGS=${EXTRA_ARGS:-}                     # e.g. "--visualize" or "--precision bf16"

evaluate() {  # dataset name, checkpoint
    if [[ ! -f "$DATA_ROOT/$1/meta.json" ]]; then
        echo "skipping $1: no $DATA_ROOT/$1/meta.json (see README, 'Data')"
        return
    fi
    python test.py \
        --dataset "$1" \
        --data_path "$DATA_ROOT/$1" \
        --checkpoint_path "$2" \
        --clip_weights "$CLIP_WEIGHTS" \
        --save_path "$RESULTS/$1" \
        --features_list 6 12 18 24 --image_size 518 --topk 50 --sigma 8 \
        --pro_mode "$PRO_MODE" --device "$DEVICE" --precision "$PRECISION" $EXTRA_ARGS
}

evaluate mvtec "$VISA_CHECKPOINT"
for dataset in visa mpdd btad ksdd dagm dtd headct brainmri br35h isic colondb clinicdb kvasir endo; do
    evaluate "$dataset" "$MVTEC_CHECKPOINT"
done

python summarize.py "$RESULTS"
