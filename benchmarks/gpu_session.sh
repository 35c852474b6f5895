#!/usr/bin/env bash
# One GPU session, scripted: the CUDA tests, then bench_gpu.py for every registered method, results under OUT.
# Prepared for a lent machine with PyTorch but without this project's other packages (carried as wheels in .whl/):
#   bash benchmarks/gpu_session.sh            # OUT (default ./gpu_out) gets cuda_tests.log, bench.log, bench_gpu.json
# TEST_TIMEOUT / BENCH_TIMEOUT (seconds) bound each part, so that whatever finished comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-150}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py ${CUDA_TEST_ARGS:-} \
    2>&1 | tee "$OUT/cuda_tests.log" | tail -25
timeout "${BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/bench_gpu.py --model "${METHODS:-all}" --workdir /tmp/zsas_bench \
    --train_precisions bf16 --profile --output "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 \
    | grep -v "it/s\]\|batch/s\]\|img/s\]\|image/s\]" | tee "$OUT/bench.log" | grep -v "^20[0-9][0-9]-" | tail -120
