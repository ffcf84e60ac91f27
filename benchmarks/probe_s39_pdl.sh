#!/usr/bin/env bash
# Session 39, one device call, any card. Issue 16: the pallas decode launches overlapped by programmatic dependent
# launch (Tuning.pdl, lora.pallas.tiling.pdl_modes: the split shrink lets the next kernel launch at its start, the
# partial-tile sum and the expands wait for the kernel before them, triton's layout). The GPU tests first (the PDL
# chain in a replayed graph against plain launches, the pallas GPU suite, graph safety), then the decode step with
# PDL (beside triton) and without (LORA_PALLAS_NO_PDL=1), then each decode op graph-batched, triton / pallas /
# pallas:nopdl (benchmarks/decode_kernels.py). Carry .pallas-cache, lowered first (about 8 minutes on 2 cores):
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' --tunings nopdl \
#     --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up
# Decision rule, written before the call: PDL stays on by default if the pallas decode step is faster with it on
# at least three of the four cases and slower by no more than 2% on the other; else Tuning.pdl defaults to off.
# Usage (device tool): bash benchmarks/probe_s39_pdl.sh [PREFIX]; STEPS: "tests step decode".
set -u
P=${1:-s39p}
DEFAULT_STEPS="tests step decode"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-170} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want step; then
t0=$SECONDS
PYTHONPATH=. timeout 100 python3 -m lora compare --step --quick --backends triton,pallas --no-progress \
    --json $OUT/${P}_step.json > $OUT/${P}_step.txt 2>&1
echo "== step rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step.txt | cut -c1-110
t0=$SECONDS
LORA_PALLAS_NO_PDL=1 PYTHONPATH=. timeout 80 python3 -m lora compare --step --quick --backends pallas --no-progress \
    --json $OUT/${P}_step_nopdl.json > $OUT/${P}_step_nopdl.txt 2>&1
echo "== step (no PDL) rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_nopdl.txt | cut -c1-110
fi
if want decode; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${DECODE_S:-170} python3 benchmarks/decode_kernels.py --no-profile \
    --budget-s $(( ${DECODE_S:-170} - 30 )) --ops shrink1,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends triton,pallas,pallas:nopdl --json $OUT/${P}_decode.json > $OUT/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; grep -E " us " $OUT/${P}_decode.txt | cut -c1-120 | tail -n 100
fi
