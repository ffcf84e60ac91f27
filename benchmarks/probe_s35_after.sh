#!/usr/bin/env bash
# Session 35, issue 17: the H100 table re-tuned per segment geometry (benchmarks/results/h100/s35/tables/, from
# probe_s35_any.sh) against the shipped one, same card, same call: triton's prefill-8k and mixed rows, both ranks,
# every op, under each table (before / after), then triton (re-tuned) beside SGLang's triton_v2 and csgmv on the
# rows where a peer was ahead in session 34. Needs .peers/src and .peers/site carried.
# Usage (device tool): [TABLES=dir] bash benchmarks/probe_s35_after.sh [PREFIX]
set -u
P=${1:-s35a}
D=${TABLES:-benchmarks/results/h100/s35/tables}
nvidia-smi --query-gpu=name --format=csv,noheader
CASES="--case llama3-8b-r16-prefill-8k --case llama3-8b-r16-mixed --case llama3-8b-r64-prefill-8k --case llama3-8b-r64-mixed"
for L in shipped tuned; do
    t0=$SECONDS
    [ $L = tuned ] && export KERNELSTACK_TUNE_DIR=$D
    PYTHONPATH=. timeout 150 python3 -m lora compare --quick --no-progress $CASES --backends triton \
        --json $OUT/${P}_$L.json > $OUT/${P}_$L.txt 2>&1
    echo "== triton $L rc=$? $((SECONDS - t0)) s"
done
python3 benchmarks/rows_diff.py $OUT/${P}_shipped.json $OUT/${P}_tuned.json > $OUT/${P}_before_after.md 2>&1; cat $OUT/${P}_before_after.md
t0=$SECONDS
PYTHONPATH=. timeout 200 python3 benchmarks/peers/run.py compare --quick --no-progress $CASES \
    --ops shrink2,shrink_down,expand_gate_up,gate_up --backends triton,peer-sglang-csgmv,peer-sglang-v2 \
    --json $OUT/${P}_peers.json > $OUT/${P}_peers.txt 2>&1
echo "== peers rc=$? $((SECONDS - t0)) s"
python3 benchmarks/peers/report.py $OUT/${P}_peers.json > $OUT/${P}_peers.md; tail -25 $OUT/${P}_peers.md
