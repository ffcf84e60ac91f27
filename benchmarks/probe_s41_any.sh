#!/usr/bin/env bash
# Session 41, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site), then nothing else. On another card, issue 16:
#   tests    the pallas GPU suite, graph safety and the PDL chain with the split shrink as PDL_WAIT (74bb056: only
#            the chain test has run on a GPU with it);
#   prepare  benchmarks/prepare_cost.py, then the same with the builder compiled by torch.compile
#            (benchmarks/probe_s41/compiled_prepare.py: checked bitwise against the eager builder first);
#   step     the decode step (triton, pallas), then pallas with the compiled builder.
# Carry .pallas-cache lowered for main's decode cases (the command is in the summary of benchmarks/probe_s40_any.sh).
# Decision rule, written before the call: the compiled builder is worth building into the torch executor if the
# pallas step is faster with it on all four cases by at least 1.5% (the step's run-to-run noise is about 1%).
# Usage (device tool): bash benchmarks/probe_s41_any.sh [PREFIX]; STEPS: "tests prepare step".
set -u
P=${1:-s41}
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
    exit
fi
DEFAULT_STEPS="tests prepare step"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want prepare; then
t0=$SECONDS
[ -z "${SKIP_MAIN:-}" ] && PYTHONPATH=. timeout 60 python3 benchmarks/prepare_cost.py --json $OUT/${P}_prepare.json > $OUT/${P}_prepare.txt 2>&1
echo "== prepare rc=$? $((SECONDS - t0)) s"; grep -E "prepare " $OUT/${P}_prepare.txt | cut -c1-120
t0=$SECONDS
PYTHONPATH=. timeout 150 python3 benchmarks/probe_s41/compiled_prepare.py prepare --backends pallas \
    --json $OUT/${P}_prepare_compiled.json > $OUT/${P}_prepare_compiled.txt 2>&1
echo "== prepare compiled rc=$? $((SECONDS - t0)) s"; grep -E "prepare |bitwise|Error" $OUT/${P}_prepare_compiled.txt | cut -c1-200
fi
if want step; then
t0=$SECONDS
[ -z "${SKIP_MAIN:-}" ] && PYTHONPATH=. timeout 100 python3 -m lora compare --step --quick --backends triton,pallas --no-progress \
    --json $OUT/${P}_step_main.json > $OUT/${P}_step_main.txt 2>&1
echo "== step main rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_main.txt | cut -c1-110
t0=$SECONDS
PYTHONPATH=. timeout 150 python3 benchmarks/probe_s41/compiled_prepare.py step --quick --backends pallas --no-progress \
    --json $OUT/${P}_step_compiled.json > $OUT/${P}_step_compiled.txt 2>&1
echo "== step compiled rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|bitwise|Error" $OUT/${P}_step_compiled.txt | cut -c1-110
fi
