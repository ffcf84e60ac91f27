#!/usr/bin/env bash
# Issue 17 on the H200, one shot from the repository root: tune the triton backend's plans for Llama-3-8B
# (ranks 16 and 64, decode / prefill / mixed, one launch or two for decode qkv / gate-up) within a budget,
# then show which table the backend now reads. Everything lands in $OUT (default ./.out):
#   $OUT/tables/<device>.json  the table (copy it to lora/triton/tables/ to ship it)
#   $OUT/tune.log              a line per tuned bucket (chosen plan, its time and the heuristic's)
#   $OUT/list.txt              `python -m lora list` with that table in place
# TUNE_BUDGET_S (default 240) bounds the measuring; the table is rewritten after every bucket.
set -u
OUT=${OUT:-./.out}
mkdir -p "$OUT/tables"
export PYTHONPATH=${PYTHONPATH:-.}
python -m lora tune --model llama3-8b --budget-s "${TUNE_BUDGET_S:-240}" --out "$OUT/tables/" --no-progress 2>&1 \
    | tee "$OUT/tune.log"
KERNELSTACK_TUNE_DIR="$OUT/tables" python -m lora list 2>&1 | sed -n '/^triton plans/,$p' | tee "$OUT/list.txt"
