#!/usr/bin/env bash
# Session 39, one device call, any card. Issue 16, after probe_s39_pdl.sh: with PDL the pallas decode step was faster
# on all four cases, but the standalone split shrinks at 256 tokens and the rank-64 64-token down-projection shrink
# were 1-3 us slower (their partial-tile sum, a dependent, launched at the shrink's start). Trial
# (benchmarks/probe_s39/notrigger.patch): the split shrink launches plainly without letting the next kernel launch
# early; the sum and the expands stay dependents (launched as the shrink's CTAs exit). The PDL GPU test first
# (fixed: its gate-up reads the QKV output's 1,536 columns), then, main then patched, the decode step (pallas) and
# the shrinks and fused ops graph-batched. Carry .pallas-cache with both lowered (the patch's too: apply it,
# run pallas_prelower.py as probe_s39_pdl.sh says, revert).
# Decision rule, written before the call: the patch lands if the step is faster with it on at least three of the
# four cases and slower by no more than 1% on the other.
# Usage (device tool): [DECODE=0] bash benchmarks/probe_s39_trigger.sh [PREFIX] (DECODE=0: the steps only)
set -u
P=${1:-s39t}
source benchmarks/probe_preamble.sh
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider -n 3 tests/gpu/test_pallas_pdl.py > $OUT/${P}_pdl_test.txt 2>&1
echo "== pdl test rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|Error" $OUT/${P}_pdl_test.txt | tail -n 5 | cut -c1-300
for v in main trial; do
    [ $v = trial ] && { git apply benchmarks/probe_s39/notrigger.patch || { echo "patch failed"; exit 1; }; }
    t0=$SECONDS
    PYTHONPATH=. timeout 60 python3 -m lora compare --step --quick --backends pallas --no-progress \
        --json $OUT/${P}_step_$v.json > $OUT/${P}_step_$v.txt 2>&1
    echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_$v.txt | cut -c1-110
    [ "${DECODE:-1}" = 0 ] && continue
    t0=$SECONDS
    PYTHONPATH=.:benchmarks timeout 80 python3 benchmarks/decode_kernels.py --no-profile --budget-s 60 \
        --ops shrink1,shrink3,shrink_down,qkv,gate_up --backends pallas --json $OUT/${P}_decode_$v.json \
        > $OUT/${P}_decode_$v.txt 2>&1
    echo "== decode $v rc=$? $((SECONDS - t0)) s"; grep -E " us " $OUT/${P}_decode_$v.txt | cut -c1-100
done
git apply -R benchmarks/probe_s39/notrigger.patch
