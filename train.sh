#!/usr/bin/env bash
# The papers' training protocol, for either method:
#   METHOD=vip2 (default): ViP²-CLIP on MVTec AD (for every other dataset) and on VisA (for MVTec AD), SPEC §5.
#   METHOD=vcp:            VCP-CLIP on VisA (lr 4e-5, no mosaic) and on MVTec AD (lr 2e-5), SPEC_VCP §6, §12.
#   METHOD=anomalyclip:    AnomalyCLIP on VisA (for MVTec AD) and on MVTec AD (for every other dataset), SPEC_ANOMALYCLIP §7.
#   METHOD=aprilgan:       APRIL-GAN on MVTec AD (3 epochs, mosaic 0.2) and on VisA (15 epochs), SPEC_APRILGAN §6.
#   METHOD=adaclip:        AdaCLIP on MVTec AD + ColonDB (one run, the mosaic 0.2 on MVTec AD only) and on VisA + ClinicDB,
#                          SPEC_ADACLIP §7.
#   METHOD=winclip:        nothing: WinCLIP is training-free (test.sh evaluates it as it is).
# The runs and their flags come from the method's paper (`python -m models.paper $METHOD train`); a training
# set NAME+NAME trains on both datasets in one run (train.py --train_data_path A B --dataset NAME NAME) and
# writes $CHECKPOINTS/NAME+NAME_train/. Every other setting is the method's default, which is the paper's
# (`python train.py --model $METHOD --help`).
# Edit the variables below, or set them in the environment:
#   DATA_ROOT=/data CLIP_WEIGHTS=ViT-L-14-336px.pt METHOD=vcp bash train.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}                       # the interpreter (a virtual environment's, say)
METHOD=${METHOD:-$("$PYTHON" -m models.paper default)}  # one of: python -m models.paper methods
DATA_ROOT=${DATA_ROOT:-./data}                 # DATA_ROOT/NAME/meta.json, or DATA_ROOT/meta_NAME.json (VCP-CLIP's layout)
CLIP_WEIGHTS=${CLIP_WEIGHTS:-openai}           # ViT-L-14-336px.pt, a state dict, or 'openai'
CHECKPOINTS=${CHECKPOINTS:-./checkpoints/$METHOD}   # epoch_{n}.pth land in $CHECKPOINTS/{TRAINING_SET}_train/
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}                   # fp32 reproduces the reference; bf16 is faster on a GPU
EXTRA_ARGS=${EXTRA_ARGS:-}                     # e.g. "--overwrite" to run again into the same folders
NPROC=${NPROC:-1}                              # >1: each training with DDP on NPROC processes (torchrun)
GPUS=${GPUS:-}                                 # e.g. 0,1: the trainings side by side, one GPU each
source ./scripts_common.sh

protocol=$("$PYTHON" -m models.paper "$METHOD" train)
if [[ -z "$protocol" ]]; then  # a training-free method's paper names no training run
    echo "train.sh: $METHOD is training-free: nothing to train (evaluate it with test.sh)"
    exit 0
fi
while read -r auxiliary flags; do
    IFS='+' read -r -a names <<< "$auxiliary"   # its datasets (models/paper.py's COMBINED joins them)
    roots=()
    for name in "${names[@]}"; do
        data=$(data_path "$name")
        roots+=("${data:-$DATA_ROOT}")
    done
    # shellcheck disable=SC2086  # $flags, $EXTRA_ARGS and the launcher are lists of words
    run_job "training on $auxiliary" "$CHECKPOINTS/${auxiliary}_train.console.txt" $(launcher) train.py \
        --model "$METHOD" \
        --dataset "${names[@]}" \
        --train_data_path "${roots[@]}" \
        --save_path "$CHECKPOINTS/${auxiliary}_train" \
        --clip_weights "$CLIP_WEIGHTS" \
        --device "$DEVICE" --precision "$PRECISION" $flags $EXTRA_ARGS
done <<< "$protocol"
wait_all
if [[ $failures -gt 0 ]]; then echo "train.sh: $failures training run(s) failed" >&2; exit 1; fi
