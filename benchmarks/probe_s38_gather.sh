#!/usr/bin/env bash
# Session 38, one device call, any card. Issue 16: the gathering decode expand with fewer B tiles in flight
# where that lets an SM hold two of its grid's working CTAs (ExpandConfig.gather_stages: 2 instead of 4 on the
# rank-64 256-token gate-up expand, 224 working CTAs of 103 KB instead of 135 KB, so one wave instead of two;
# the kernel's one-CTA-per-tile fallback now scopes its base tile apart, 16 KB less everywhere) beside four
# stages (pallas:gs4) and triton: the gathering GPU tests, then the decode rows whose expand gathers, each
# checked against the float64 oracle and timed graph-batched (benchmarks/decode_kernels.py). About 3 minutes.
# Lower first, into the cache the call carries (about 3 minutes on 2 cores):
#   for t in "" "--tunings gs4"; do JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache \
#     PYTHONPATH=.:benchmarks .venv-jax/bin/python benchmarks/pallas_prelower.py \
#     --cases 'llama3-8b-r*-decode-256,llama3-8b-r64-decode-64' --ops expand_qkv,expand_gate_up,qkv,gate_up $t; done
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s38_gather.sh [PREFIX]; STEPS: "tests decode".
# Decision rule, written before the call: the residency rule stays if the rank-64 256-token gate-up expand is
# faster with it and no other row is slower by more than 3%; else gather_stages stays at four.
set -u
P=${1:-s38g}
DEFAULT_STEPS="tests decode"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-100} python3 -m pytest -q -p no:cacheprovider -n 4 tests/gpu/test_pallas_gpu.py -k gather \
    > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; tail -n 5 $OUT/${P}_gpu_tests.txt | cut -c1-200
fi
if want decode; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${DECODE_S:-130} python3 benchmarks/decode_kernels.py --no-profile \
    --budget-s $(( ${DECODE_S:-130} - 25 )) --cases llama3-8b-r64-decode-256,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64 \
    --ops expand_gate_up,gate_up,expand_qkv,qkv --backends triton,pallas,pallas:gs4 \
    --json $OUT/${P}_decode.json > $OUT/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 40 $OUT/${P}_decode.txt | cut -c1-160
fi
