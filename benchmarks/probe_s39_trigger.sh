#!/usr/bin/env bash
# Session 39, one device call, any card. Issue 16, after probe_s39_pdl.sh: with PDL the pallas decode step was faster
# on all four cases, but the standalone split shrinks at 256 tokens and the rank-64 64-token down-projection shrink
# were 1-3 us slower (their partial-tile sum, a dependent, launched at the shrink's start). Two trials of the split
# shrink's launch, each a patch of lora.pallas.tiling.pdl_modes (the sum and the expands stay dependents):
#   notrigger (benchmarks/probe_s39/notrigger.patch): the shrink launches plainly and lets nothing launch early (its
#     sum launches as its CTAs exit);
#   all (benchmarks/probe_s39/all.patch): the shrink is a dependent too (waits for the kernel before it).
# The PDL GPU test first (tests/gpu/test_pallas_pdl.py, fixed after call 2: its gate-up reads the QKV output's 1,536
# columns), then, for main and each trial, the decode step (pallas) and (unless DECODE=0) the shrinks and fused ops
# graph-batched. Carry .pallas-cache with every variant lowered: `bash benchmarks/probe_s39_lower.sh` (about a
# minute a variant on 2 cores; 31 MB for the three).
# Decision rule, written before the call: a trial lands if the step is faster with it than with main on at least
# three of the four cases and slower by no more than 1% on the other (the faster of two that both qualify).
# Usage (device tool): [DECODE=0] [VARIANTS="main notrigger all"] bash benchmarks/probe_s39_trigger.sh [PREFIX]
set -u
P=${1:-s39t}
source benchmarks/probe_preamble.sh
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider -n 3 tests/gpu/test_pallas_pdl.py > $OUT/${P}_pdl_test.txt 2>&1
echo "== pdl test rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|Error" $OUT/${P}_pdl_test.txt | tail -n 5 | cut -c1-300
for v in ${VARIANTS:-main notrigger all}; do
    if [ $v != main ]; then git apply benchmarks/probe_s39/$v.patch || { echo "patch $v failed"; continue; }; fi
    t0=$SECONDS
    PYTHONPATH=. timeout 60 python3 -m lora compare --step --quick --backends pallas --no-progress \
        --json $OUT/${P}_step_$v.json > $OUT/${P}_step_$v.txt 2>&1
    echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_$v.txt | cut -c1-110
    if [ "${DECODE:-1}" != 0 ]; then
        t0=$SECONDS
        PYTHONPATH=.:benchmarks timeout 80 python3 benchmarks/decode_kernels.py --no-profile --budget-s 60 \
            --ops shrink1,shrink3,shrink_down,qkv,gate_up --backends pallas --json $OUT/${P}_decode_$v.json \
            > $OUT/${P}_decode_$v.txt 2>&1
        echo "== decode $v rc=$? $((SECONDS - t0)) s"; grep -E " us " $OUT/${P}_decode_$v.txt | cut -c1-100
    fi
    if [ $v != main ]; then git apply -R benchmarks/probe_s39/$v.patch; fi
done
