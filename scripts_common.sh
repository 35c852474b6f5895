# Shared by train.sh and test.sh (sourced): where a dataset's meta file lives, and how runs are launched.
#   NPROC=N         each run under torchrun with N processes (one node; DDP training, sharded evaluation)
#   GPUS=0,1,2,3    runs spread over these GPUs, one run per GPU at a time (each run on one GPU)

data_path() {  # the --data_path for registry name $1: DATA_ROOT/NAME (meta.json or meta_NAME.json), else DATA_ROOT
    if [[ -f "$DATA_ROOT/$1/meta.json" || -f "$DATA_ROOT/$1/meta_$1.json" ]]; then echo "$DATA_ROOT/$1"
    elif [[ -f "$DATA_ROOT/meta_$1.json" ]]; then echo "$DATA_ROOT"; fi
}

launcher() {  # the command that starts one run's script
    if [[ "${NPROC:-1}" -gt 1 ]]; then
        echo "$PYTHON -m torch.distributed.run --standalone --nproc_per_node $NPROC"
    else
        echo "$PYTHON"
    fi
}

if [[ -n "${GPUS:-}" && "${NPROC:-1}" -gt 1 ]]; then
    echo "set NPROC (several processes per run) or GPUS (one GPU per run, runs side by side), not both" >&2
    exit 2
fi
IFS=',' read -r -a GPU_LIST <<< "${GPUS:-}"
declare -a JOB_PIDS=() JOB_NAMES=()
failures=0

run_job() {  # name, log file, command...: in the foreground, or on the next free GPU when GPUS is set
    local name=$1 log=$2
    shift 2
    if [[ ${#GPU_LIST[@]} -eq 0 ]]; then
        "$@" || failures=$((failures + 1))
        return
    fi
    while [[ ${#JOB_PIDS[@]} -ge ${#GPU_LIST[@]} ]]; do wait_one; done
    local used=" ${JOB_GPUS[*]:-} " gpu
    for gpu in "${GPU_LIST[@]}"; do [[ "$used" != *" $gpu "* ]] && break; done
    mkdir -p "$(dirname "$log")"
    echo "started $name on GPU $gpu (output in $log)"
    CUDA_VISIBLE_DEVICES=$gpu "$@" > "$log" 2>&1 &
    JOB_PIDS+=($!) JOB_NAMES+=("$name") JOB_GPUS+=("$gpu")
}

wait_one() {  # wait for the oldest running job
    local status=0
    wait "${JOB_PIDS[0]}" || status=$?
    if [[ $status -ne 0 ]]; then echo "${JOB_NAMES[0]} failed (exit $status)" >&2; failures=$((failures + 1))
    else echo "${JOB_NAMES[0]} done"; fi
    JOB_PIDS=("${JOB_PIDS[@]:1}") JOB_NAMES=("${JOB_NAMES[@]:1}") JOB_GPUS=("${JOB_GPUS[@]:1}")
}

wait_all() {
    while [[ ${#JOB_PIDS[@]} -gt 0 ]]; do wait_one; done
}
declare -a JOB_GPUS=()
