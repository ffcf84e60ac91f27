#!/usr/bin/env bash
# Session 38, one device call, any card. Issue 16: the one-CTA-per-tile decode expand with a tiled, swizzled base
# tile for full blocks (ExpandConfig.full_tile, the default since this session: one TMA box each way and
# vectorized merge loads and stores, where the row-exact ladder's plain tile takes a scalar access an element;
# session 29's profile put ~29% of the decode expand's samples after its adapter loop, the merge's scalar stores
# among them) beside the earlier kernel (pallas:nofull) and triton on every decode case: the pallas GPU tests
# first, then each row checked against the float64 oracle and timed graph-batched (benchmarks/decode_kernels.py).
# About 5 minutes. Lower the decode kernels first (about 5 minutes on 2 cores), into the cache the call carries:
#   for t in "" "--tunings nofull"; do JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache \
#     PYTHONPATH=.:benchmarks .venv-jax/bin/python benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
#     --ops expand,expand_qkv,expand_gate_up,qkv,gate_up $t; done
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s38_full.sh [PREFIX]; STEPS: "tests decode".
# Decision rule, written before the call: the tiled tile stays the default if the decode expand rows are faster
# with it on average and none is slower by more than 3%; else Tuning.expand_full_tile defaults to False.
set -u
P=${1:-s38f}
DEFAULT_STEPS="tests decode"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_gpu.py \
    > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; tail -n 5 $OUT/${P}_gpu_tests.txt | cut -c1-200
fi
if want decode; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${DECODE_S:-200} python3 benchmarks/decode_kernels.py --no-profile \
    --budget-s $(( ${DECODE_S:-200} - 30 )) --ops expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends triton,pallas,pallas:nofull --json $OUT/${P}_decode.json > $OUT/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 70 $OUT/${P}_decode.txt | cut -c1-160
fi
