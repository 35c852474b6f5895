#!/usr/bin/env bash
# The papers' evaluation protocol, for either method, then the tables beside the paper's numbers:
#   METHOD=vip2 (default): the MVTec-trained model on every other dataset, the VisA-trained one on MVTec AD.
#   METHOD=vcp:            the VisA-trained model on the other nine datasets, the MVTec-trained one on VisA.
#   METHOD=anomalyclip:    the VisA-trained model on MVTec AD, the MVTec-trained one on every other dataset.
#   METHOD=aprilgan:       the VisA-trained model on MVTec AD, the MVTec-trained one on VisA (zero-shot; few-shot:
#                          EXTRA_ARGS="--mode few_shot --k_shot 4").
#   METHOD=adaclip:        the VisA+ClinicDB-trained model on MVTec AD and ColonDB, the MVTec AD+ColonDB-trained one on
#                          every other dataset.
#   METHOD=winclip:        training-free, MVTec AD and VisA as they are (WinCLIP+: EXTRA_ARGS="--k_shot 4"); its
#                          numbers need CLIP_WEIGHTS=the laion400m_e31 ViT-B-16-plus-240 file (SPEC_WINCLIP §1).
# Which checkpoint evaluates which dataset comes from the method's paper (`python -m models.paper $METHOD test`);
# every setting comes from the checkpoint. Datasets without a meta file are skipped with a note; the
# script fails when nothing at all was evaluated.
# Edit the variables below, or set them in the environment: DATA_ROOT=/data METHOD=vcp bash test.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
METHOD=${METHOD:-$("$PYTHON" -m models.paper default)}  # one of: python -m models.paper methods
DATA_ROOT=${DATA_ROOT:-./data}                 # DATA_ROOT/NAME/meta.json, or DATA_ROOT/meta_NAME.json (VCP-CLIP's layout)
CLIP_WEIGHTS=${CLIP_WEIGHTS:-openai}           # ViT-L-14-336px.pt, a state dict, or 'openai'
CHECKPOINTS=${CHECKPOINTS:-./checkpoints/$METHOD}
# The checkpoint trained on NAME: ${NAME}_CHECKPOINT (e.g. MVTEC_CHECKPOINT=mvtec_train_epoch_10.pth, the
# authors' release), else the last epoch_{n}.pth in $CHECKPOINTS/NAME_train/. A training set of several
# datasets, NAME+NAME: ${NAME_NAME}_CHECKPOINT (e.g. MVTEC_COLONDB_CHECKPOINT=weights/pretrained_mvtec_colondb.pth).
RESULTS=${RESULTS:-./results/$METHOD}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}
PRO_MODE=${PRO_MODE:-official}                 # 'official' (the papers' AUPRO) or 'exact'
EXTRA_ARGS=${EXTRA_ARGS:-}                     # e.g. "--visualize", "--overwrite" or "--precision bf16"
NPROC=${NPROC:-1}                              # >1: each evaluation sharded over NPROC processes (torchrun)
GPUS=${GPUS:-}                                 # e.g. 0,1,2,3: the evaluations side by side, one GPU each
source ./scripts_common.sh

checkpoint_variable() {  # the variable naming the checkpoint trained on $1: MVTEC_CHECKPOINT, MVTEC_COLONDB_CHECKPOINT
    local upper="${1^^}"
    echo "${upper//+/_}_CHECKPOINT"
}

checkpoint_of() {  # the checkpoint trained on training set $1
    local variable
    variable=$(checkpoint_variable "$1")
    if [[ -n "${!variable:-}" ]]; then echo "${!variable}"; return; fi
    # `|| true`: with no epoch file `ls` fails, and under pipefail that would end the script silently (exit 2)
    # before the message below could say why
    ls -v "$CHECKPOINTS/$1_train"/epoch_*.pth 2>/dev/null | tail -n 1 || true
}

evaluated=0
protocol=$("$PYTHON" -m models.paper "$METHOD" test)
while read -r dataset auxiliary; do
    data=$(data_path "$dataset")
    if [[ -z "$data" ]]; then
        echo "skipping $dataset: no $DATA_ROOT/$dataset/meta.json nor $DATA_ROOT/meta_$dataset.json (README, 'Data')"
        continue
    fi
    checkpoint_flags=()  # none for a training-free method (its protocol names no training set: "-")
    if [[ "$auxiliary" != "-" ]]; then
        checkpoint=$(checkpoint_of "$auxiliary")
        if [[ -z "$checkpoint" ]]; then
            echo "test.sh: no checkpoint trained on $auxiliary for $dataset: run train.sh, or set $(checkpoint_variable "$auxiliary")" >&2
            exit 1
        fi
        checkpoint_flags=(--checkpoint_path "$checkpoint")
    fi
    # shellcheck disable=SC2086  # $EXTRA_ARGS and the launcher are lists of words
    run_job "$dataset" "$RESULTS/console/$dataset.txt" $(launcher) test.py --model "$METHOD" \
        --dataset "$dataset" \
        --data_path "$data" \
        "${checkpoint_flags[@]}" \
        --clip_weights "$CLIP_WEIGHTS" \
        --save_path "$RESULTS/$dataset" \
        --pro_mode "$PRO_MODE" --device "$DEVICE" --precision "$PRECISION" $EXTRA_ARGS
    evaluated=$((evaluated + 1))
done <<< "$protocol"
wait_all

if [[ $failures -gt 0 ]]; then
    echo "test.sh: $failures evaluation(s) failed; the others are summarised" >&2
fi
if [[ $evaluated -eq 0 ]]; then
    echo "test.sh: no dataset of the $METHOD protocol was found under $DATA_ROOT; nothing was evaluated" >&2
    exit 1
fi
"$PYTHON" summarize.py "$RESULTS" --model "$METHOD" --overwrite  # its own table of what is in $RESULTS
[[ $failures -eq 0 ]]
