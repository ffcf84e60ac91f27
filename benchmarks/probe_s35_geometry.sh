#!/usr/bin/env bash
# Session 35, issue 17: prefill-sized plans keyed by segment geometry (tiling.segment_class: prefill-8k's 8 long
# prompts and mixed's 32 short segments no longer share one plan). On whichever card comes:
#   tune   every primitive's prefill and mixed buckets re-tuned from the shipped table (now one bucket per
#          geometry), written to $OUT/tables/<device>.json (the table to ship);
#   peers LABEL [DIR]  triton (with DIR as the user's tables, else the shipped table) beside SGLang's triton_v2
#          and csgmv (the best peers on these rows in s34) on the prefill-8k and mixed cases, both ranks.
# Needs .peers/src and .peers/site carried for `peers` (bash benchmarks/peers/fetch.sh).
# Usage (device tool): [BUDGET=s] [MAXC=n] bash benchmarks/probe_s35_geometry.sh tune [PREFIX]
#                      bash benchmarks/probe_s35_geometry.sh peers LABEL [TABLE_DIR] [PREFIX]
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
case "$1" in
tune)
    P=${2:-s35t}
    [ -f lora/triton/tables/$T ] || { echo "no shipped table lora/triton/tables/$T"; exit 1; }
    mkdir -p $OUT/tables && cp lora/triton/tables/$T $OUT/tables/$T
    t0=$SECONDS
    PYTHONPATH=. KERNELSTACK_TUNE_DIR=$OUT/tables timeout $((${BUDGET:-420} + 90)) python3 -m lora tune --model llama3-8b \
        --ranks 16,64 --regimes prefill,mixed --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up \
        --max-candidates ${MAXC:-60} --budget-s ${BUDGET:-420} --out $OUT/tables/ --no-progress > $OUT/${P}_tune.txt 2>&1
    echo "== tune rc=$? $((SECONDS - t0)) s"; grep -E "^\[|tuned" $OUT/${P}_tune.txt | cut -c1-200
    ;;
peers)
    L=$2; D=${3:-}; P=${4:-s35g}
    [ -n "$D" ] && export KERNELSTACK_TUNE_DIR=$D
    PYTHONPATH=. python3 -m lora list 2>&1 | grep -A3 "triton plans"
    for r in r16 r64; do
        t0=$SECONDS
        PYTHONPATH=. timeout 200 python3 benchmarks/peers/run.py compare --quick --no-progress \
            --case llama3-8b-$r-prefill-8k --case llama3-8b-$r-mixed \
            --backends triton,peer-sglang-csgmv,peer-sglang-v2 --json $OUT/${P}_${L}_$r.json > $OUT/${P}_${L}_$r.txt 2>&1
        echo "== peers $L $r rc=$? $((SECONDS - t0)) s"
        python3 benchmarks/peers/report.py $OUT/${P}_${L}_$r.json > $OUT/${P}_${L}_$r.md; grep -E "\| (1\.[0-9]+) \|$|ahead" $OUT/${P}_${L}_$r.md
    done
    ;;
*) echo "usage: $0 tune [PREFIX] | peers LABEL [TABLE_DIR] [PREFIX]"; exit 2;;
esac
