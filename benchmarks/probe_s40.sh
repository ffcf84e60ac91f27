#!/usr/bin/env bash
# Session 40, one device call, any card. Issue 16:
#   prepare  benchmarks/prepare_cost.py: each backend's once-per-batch metadata, captured alone and timed, its
#            kernels counted (session 38 on the H100: pallas 141-147 us, 79 kernels; the builder now runs 40 torch
#            ops a decode batch, was 50);
#   tests    the GPU tests of the pallas backend with that builder: the PDL chain (never run on a GPU yet), the
#            pallas GPU suite, graph safety;
#   trigger  the decode step (triton and pallas), then pallas with the split shrink without its early trigger
#            (session 39's trial, benchmarks/probe_s39/notrigger.patch; the rule is in probe_s39_trigger.sh).
# Carry .pallas-cache lowered for main and notrigger (bash benchmarks/probe_s39_lower.sh "main notrigger": the
# kernel sources are those of session 39's end; the builder is not part of the cache key).
# Usage (device tool): bash benchmarks/probe_s40.sh [PREFIX]; STEPS: "prepare tests trigger".
set -u
P=${1:-s40}
DEFAULT_STEPS="prepare tests trigger"
source benchmarks/probe_preamble.sh
if want prepare; then
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 benchmarks/prepare_cost.py --json $OUT/${P}_prepare.json > $OUT/${P}_prepare.txt 2>&1
echo "== prepare rc=$? $((SECONDS - t0)) s"; grep -E "prepare " $OUT/${P}_prepare.txt | cut -c1-120
fi
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want trigger; then
for v in main notrigger; do
    if [ $v != main ]; then git apply benchmarks/probe_s39/$v.patch || { echo "patch $v failed"; continue; }; fi
    t0=$SECONDS
    PYTHONPATH=. timeout 100 python3 -m lora compare --step --quick --backends $([ $v = main ] && echo triton,)pallas \
        --no-progress --json $OUT/${P}_step_$v.json > $OUT/${P}_step_$v.txt 2>&1
    echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_$v.txt | cut -c1-110
    if [ $v != main ]; then git apply -R benchmarks/probe_s39/$v.patch; fi
done
fi
