#!/usr/bin/env bash
# One GPU lease for issues 17 and 18: the kernel tests on the GPU, a bounded tile sweep (the fused
# kernel at D = 256, never swept), every benchmark cell of #17's goal for both routes against the
# causal-SDPA ceiling, training steps on the 1B and 8B shapes, then #18's table against PEFT on the 1B
# shape at 2048 (prefix, adapter, LoRA). Each stage has its own time limit (150 + 180 + 35 + 60 + 100 s),
# so the whole run ends within 9 minutes. Everything lands in $OUT as 6 files (the device tool brings
# back at most 8): gpu_check.log (stages, exit codes, times, device), tests.txt, bench_attention.txt,
# train.txt (both benchmarks' printed tables), results_peft.md, and results.tgz with every JSON.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh            # on the GPU machine, from the repo root
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --dry-run  # on a CPU: tiny shapes, the interpreter
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset XPREFIX_ATTN_IMPL

log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }

# stage NAME FILE SECONDS CMD...: run CMD with a time limit, append its output to $OUT/FILE, go on
stage() {
    local name=$1 file=$2 limit=$3; shift 3
    log "$name (limit ${limit}s): $*"
    local start=$SECONDS
    echo "## $name: $*" >>"$OUT/$file"
    timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$OUT/$file" 2>&1
    log "$name: exit $? after $((SECONDS - start))s"
}

VERSIONS='import torch, triton, transformers as t; print("torch", torch.__version__, "triton", triton.__version__,
"transformers", t.__version__)'
log "start; dry run: $DRY; $($PY -c "$VERSIONS" 2>&1)"
if [ "$DRY" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
        >>"$OUT/gpu_check.log" 2>&1
fi

# 1. tests: the kernel files whole (on a CUDA machine their grids run on the GPU in fp16/bf16, D = 256
#    and windows included) and the adapters through the kernels; parallel where pytest-xdist is there
#    (compiling dominates), each test bounded where pytest-timeout is
PARALLEL=""; $PY -c "import xdist" 2>/dev/null && PARALLEL="-n 8"
TIMEOUT=""; $PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT="--timeout 120"
if [ "$DRY" = 0 ]; then
    stage tests tests.txt 150 $PY -m pytest -q -rfE $PARALLEL $TIMEOUT tests/test_split_attention.py \
        tests/test_kernels.py tests/test_adapters.py tests/test_mask_guard.py
else
    stage tests tests.txt 120 $PY -m pytest -q -rfE $PARALLEL $TIMEOUT tests/test_split_attention.py \
        -k "impl_choice or varlen or wrong_merge or rows_that_see_nothing"
fi

# 2. the attention benchmark: sweep D = 256's tiles first (3 configs per kernel), then D = 128 (the headline
#    cells), 64 and 256 at N = 512..16384, forward, forward+backward and decoding, both routes, the
#    two-SDPA gated composition and the ceiling's three backends; a row is written after every cell
if [ "$DRY" = 0 ]; then
    stage bench_attention bench_attention.txt 180 $PY benchmarks/bench_attention.py --dims 128 64 256 --decode \
        --providers ours-joint ours-gated split-joint split-gated merge-joint sdpa-gated --sweep --sweep-dims 256 \
        --rep-ms 30 --json "$OUT/results_attention.json"
else
    stage bench_attention bench_attention.txt 120 $PY benchmarks/bench_attention.py --dry-run --dims 16 \
        --decode --providers ours-joint ours-gated split-joint split-gated merge-joint sdpa-gated \
        --json "$OUT/results_attention.json"
fi

# 3. training steps, prefix tuning and LLaMA-Adapter through each route, against the floor whose
#    backward crosses the same layers (the paper's shapes; random weights)
if [ "$DRY" = 0 ]; then
    stage train_1b train.txt 35 $PY benchmarks/bench_train.py --model llama3.2-1b --seq 2048 --batch 4 \
        --methods prefix adapter --backends triton --impls fused split --json "$OUT/train_llama3.2-1b.json"
    stage train_8b train.txt 60 $PY benchmarks/bench_train.py --model llama3.1-8b --seq 2048 --batch 2 \
        --methods prefix adapter --backends triton --impls fused split --json "$OUT/train_llama3.1-8b.json"
else
    stage train_tiny train.txt 120 $PY benchmarks/bench_train.py --dry-run --methods prefix adapter \
        --backends triton --impls fused split --json "$OUT/train_tiny.json"
fi

# 4. issue 18: against PEFT on the 1B shape (train at 2048, scoring, generation), no checkpointing cells
if [ "$DRY" = 0 ]; then
    stage peft train.txt 100 $PY benchmarks/bench_peft.py --models llama3.2-1b --seq 2048 \
        --methods prefix adapter lora --grad-ckpt --out "$OUT/results_peft"
else
    stage peft train.txt 120 $PY benchmarks/bench_peft.py --smoke --methods prefix adapter lora \
        --impls xprefix-torch peft --grad-ckpt --out "$OUT/results_peft"
fi

# every JSON in one archive: the tool brings back at most 8 files
(cd "$OUT" && ls *.json >/dev/null 2>&1 && tar czf results.tgz *.json && rm -f *.json)
log "done in ${SECONDS}s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
# the reply carries the output's end: failures first, then the tables and the stages' times
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$OUT/tests.txt" | tail -n 25
grep -E "chosen tiles" "$OUT/bench_attention.txt"
sed -n '/^| D | N | B | pass | ceiling/,/^$/p' "$OUT/bench_attention.txt"
grep -E "^(## |\| )|^ *(pass|MISS|n/a)" "$OUT/train.txt"
grep -E "^== " "$OUT/gpu_check.log"
