#!/usr/bin/env bash
# Session 34, issue 17: the prefill / mixed rows where a peer was ahead of triton on the H100 (s34q: r64 shrink2
# 34.1 / 32.7 us against SGLang triton_v2, r16 shrink_down 84.6 / 83.7 against csgmv, r16 expand_gate_up and
# gate_up 0-2% behind triton_v2) re-tuned on whichever card comes (its shipped table as the start, up to MAXC
# candidates a bucket), with the peer comparison of those cases before (shipped table) and after (tuned table)
# in the same call. Needs .peers/src and .peers/site carried (bash benchmarks/peers/fetch.sh).
# Usage (device tool): [BUDGET=s] [MAXC=n] bash benchmarks/probe_s34_tune_peers.sh [PREFIX]
set -u
P=${1:-s34t}
nvidia-smi --query-gpu=name --format=csv,noheader
T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
[ -f lora/triton/tables/$T ] || { echo "no shipped table lora/triton/tables/$T"; exit 1; }
CASES="--case llama3-8b-r16-prefill-8k --case llama3-8b-r16-mixed --case llama3-8b-r64-prefill-8k --case llama3-8b-r64-mixed"
peers() {  # label
    local t0=$SECONDS
    PYTHONPATH=. timeout 130 python3 benchmarks/peers/run.py compare --quick --no-progress $CASES \
        --ops shrink2,shrink_down,expand_gate_up,gate_up \
        --backends triton,peer-sglang,peer-sglang-csgmv,peer-sglang-v2,peer-vllm --json $OUT/${P}_$1.json > $OUT/${P}_$1.txt 2>&1
    echo "== peers $1 rc=$? $((SECONDS - t0)) s"
    python3 benchmarks/peers/report.py $OUT/${P}_$1.json > $OUT/${P}_$1.md; grep -E "\| (1\.[0-9]+) \|$|ahead" $OUT/${P}_$1.md
}
peers shipped
mkdir -p $OUT/tables && cp lora/triton/tables/$T $OUT/tables/$T
t0=$SECONDS
PYTHONPATH=. KERNELSTACK_TUNE_DIR=$OUT/tables timeout $((${BUDGET:-200} + 60)) python3 -m lora tune --model llama3-8b \
    --ranks 16,64 --regimes prefill,mixed --ops shrink2,shrink_down,expand_gate_up --max-candidates ${MAXC:-120} \
    --budget-s ${BUDGET:-200} --out $OUT/tables/ --no-progress > $OUT/${P}_tune.txt 2>&1
echo "== tune rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $OUT/${P}_tune.txt | cut -c1-220
export KERNELSTACK_TUNE_DIR=$OUT/tables
peers tuned
