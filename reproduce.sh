#!/usr/bin/env bash
# Every table of both papers from one command (reproduce.py: plans the jobs, runs train.py and test.py, writes
# the table). TABLE is a paper table (`python reproduce.py --list`), an ablation, or 'grid' (with EXTRA_ARGS
# such as "--methods vip2 --datasets mvtec --grid topk=10,50"). Finished jobs are never run again; a killed
# run resumes. Edit the variables below, or set them in the environment:
#   TABLE=vcp:all DATA_ROOT=/data CLIP_WEIGHTS=ViT-L-14-336px.pt SEEDS="111 222 333" GPUS=0,1 bash reproduce.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}                       # the interpreter (a virtual environment's, say)
TABLE=${TABLE:-}                               # e.g. vip2:industrial, vcp:all, vcp:layers, grid
DATA_ROOT=${DATA_ROOT:-./data}                 # DATA_ROOT/NAME/meta.json, or DATA_ROOT/meta_NAME.json
CLIP_WEIGHTS=${CLIP_WEIGHTS:-openai}           # ViT-L-14-336px.pt, a state dict, or 'openai'
WORK=${WORK:-./runs/reproduce}                 # jobs in $WORK/jobs/, tables in $WORK/tables/
SEEDS=${SEEDS:-}                               # e.g. "111 222 333" (default: each method's seed)
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-fp32}
PRO_MODE=${PRO_MODE:-official}
TRAIN_ARGS=${TRAIN_ARGS:-}                     # extra train.py flags for every job (part of the job keys)
TEST_ARGS=${TEST_ARGS:-}                       # extra test.py flags for every job (part of the job keys)
EXTRA_ARGS=${EXTRA_ARGS:-}                     # reproduce.py flags, e.g. "--dry_run" or "--methods vcp"
NPROC=${NPROC:-1}                              # >1: each job under torchrun with NPROC processes
GPUS=${GPUS:-}                                 # e.g. 0,1: jobs side by side, one GPU each

if [[ -z "$TABLE" ]]; then
    echo "reproduce.sh: set TABLE to one of:" >&2
    "$PYTHON" reproduce.py --list >&2
    exit 2
fi
if [[ -n "$GPUS" && "$NPROC" -gt 1 ]]; then
    echo "set NPROC (several processes per job) or GPUS (one GPU per job, jobs side by side), not both" >&2
    exit 2
fi
seeds=()
if [[ -n "$SEEDS" ]]; then read -r -a words <<< "$SEEDS"; seeds=(--seeds "${words[@]}"); fi
# shellcheck disable=SC2086  # $EXTRA_ARGS is a list of words
exec "$PYTHON" reproduce.py --table "$TABLE" --data_root "$DATA_ROOT" --clip_weights "$CLIP_WEIGHTS" \
    --work "$WORK" --device "$DEVICE" --precision "$PRECISION" --pro_mode "$PRO_MODE" \
    --train_args "$TRAIN_ARGS" --test_args "$TEST_ARGS" --gpus "$GPUS" --nproc "$NPROC" "${seeds[@]}" $EXTRA_ARGS
