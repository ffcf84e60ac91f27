#!/usr/bin/env bash
# Session 41, one device call, any card (issue 16): the pallas torch executor's metadata builder compiled by
# torch.compile (lora/pallas/fused_meta.py, the default on CUDA devices since this session), after
# benchmarks/probe_s41_any.sh measured the same builder compiled by a patch (call 3 of results/h100/s41).
#   tests    the pallas GPU suite (test_compiled_metadata_builder among it), graph safety, the PDL chain;
#   prepare  benchmarks/prepare_cost.py, compiled (default) and op by op (LORA_PALLAS_EAGER_META=1);
#   step     the decode step, triton and pallas, then pallas op by op.
# Carry .pallas-cache lowered for main's decode cases.
# Usage (device tool): bash benchmarks/probe_s41_fused.sh [PREFIX]; STEPS: "tests prepare step".
set -u
P=${1:-s41f}
DEFAULT_STEPS="tests prepare step"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-220} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error|FAILED" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want prepare; then
for v in fused eager; do
t0=$SECONDS
LORA_PALLAS_EAGER_META=$([ $v = eager ] && echo 1 || echo 0) PYTHONPATH=. timeout 90 python3 benchmarks/prepare_cost.py \
    $([ $v = eager ] && echo --backends pallas) --json $OUT/${P}_prepare_$v.json > $OUT/${P}_prepare_$v.txt 2>&1
echo "== prepare $v rc=$? $((SECONDS - t0)) s"; grep -E "prepare |Error" $OUT/${P}_prepare_$v.txt | cut -c1-160
done
fi
if want step; then
for v in fused eager; do
t0=$SECONDS
LORA_PALLAS_EAGER_META=$([ $v = eager ] && echo 1 || echo 0) PYTHONPATH=. timeout 120 python3 -m lora compare --step \
    --quick --backends $([ $v = fused ] && echo triton,)pallas --no-progress --json $OUT/${P}_step_$v.json \
    > $OUT/${P}_step_$v.txt 2>&1
echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|Error" $OUT/${P}_step_$v.txt | cut -c1-110
done
fi
