#!/usr/bin/env bash
# Session 35, issue 17: prefill-sized plans keyed by segment geometry (tiling.segment_class: prefill-8k's 8 long
# prompts and mixed's 32 short segments no longer share one plan). On whichever card comes, every primitive's
# prefill and mixed buckets re-tuned from the shipped table (now one bucket per geometry), written to
# $OUT/tables/<device>.json (the table to ship). probe_s35_after.sh compares it with the shipped one.
# Usage (device tool): [BUDGET=s] [MAXC=n] bash benchmarks/probe_s35_geometry.sh tune [PREFIX]
set -u
[ "${1:-}" = tune ] || { echo "usage: $0 tune [PREFIX]"; exit 2; }
P=${2:-s35t}
nvidia-smi --query-gpu=name --format=csv,noheader
T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
[ -f lora/triton/tables/$T ] || { echo "no shipped table lora/triton/tables/$T"; exit 1; }
mkdir -p $OUT/tables && cp lora/triton/tables/$T $OUT/tables/$T
t0=$SECONDS
PYTHONPATH=. KERNELSTACK_TUNE_DIR=$OUT/tables timeout $((${BUDGET:-420} + 90)) python3 -m lora tune --model llama3-8b \
    --ranks 16,64 --regimes prefill,mixed --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up \
    --max-candidates ${MAXC:-60} --budget-s ${BUDGET:-420} --out $OUT/tables/ --no-progress > $OUT/${P}_tune.txt 2>&1
echo "== tune rc=$? $((SECONDS - t0)) s"; grep -E "^\[|tuned" $OUT/${P}_tune.txt | cut -c1-200
