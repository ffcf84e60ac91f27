#!/usr/bin/env bash
# Session 43, one device call, any card (issue 16): the decode kernels read their metadata before the PDL wait
# (main: the split shrink's row count, block count, slot and row slots; the partial-tile sum's row count; the
# expands' slots, counts, ranks, scalings, offsets and the gathering expand's row list), so those round trips
# overlap the kernel before, against the same kernels waiting first (main with benchmarks/probe_s43/early.patch
# reversed, in a copy of the tree under /tmp).
#   tests    the pallas GPU suite, graph safety, the PDL chain (main);
#   step     the decode step: triton and pallas (main), pallas (before), pallas (main) again;
#   ops      benchmarks/decode_kernels.py, pallas, main and before (each op graph-batched).
# Carry .out/cn and .out/co: main's and the before tree's kernels lowered for the decode cases
#   (pallas_prelower.py --cases 'llama3-8b-*-decode-*' --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,
#    expand_gate_up,qkv,gate_up, with KERNELSTACK_PALLAS_CACHE_DIR pointing at each, in each tree).
# Usage (device tool): bash benchmarks/probe_s43_early.sh [PREFIX]; STEPS: "tests step ops".
set -u
P=${1:-s43e}
DEFAULT_STEPS="tests step ops"
source benchmarks/probe_preamble.sh
MAIN=$PWD
BEFORE=/tmp/before
rm -rf $BEFORE && mkdir -p $BEFORE && cp -r lora benchmarks pyproject.toml $BEFORE/ \
    && (cd $BEFORE && patch -s -R -p1 < $MAIN/benchmarks/probe_s43/early.patch) && echo "before tree: patched back"
in_tree() {  # in_tree main|before CMD...: CMD in that tree with its lowered kernels
    local t=$1; shift
    if [ $t = main ]; then (export KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/cn PYTHONPATH=.:benchmarks; cd $MAIN && "$@")
    else (export KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/co PYTHONPATH=.:benchmarks; cd $BEFORE && "$@"); fi
}
if want tests; then
t0=$SECONDS
KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/cn PYTHONPATH=. timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider \
    -n 8 tests/gpu/test_pallas_pdl.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error|FAILED" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want step; then
for v in main before main2; do
t0=$SECONDS
tree=${v%2}
in_tree $tree timeout 120 python3 -m lora compare --step --quick \
    --backends $([ $v = main ] && echo triton,)pallas --no-progress --json $OUT/${P}_step_$v.json > $OUT/${P}_step_$v.txt 2>&1
echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|Error" $OUT/${P}_step_$v.txt | cut -c1-110
done
fi
if want ops; then
for v in main before; do
t0=$SECONDS
in_tree $v timeout ${OPS_S:-100} python3 benchmarks/decode_kernels.py --no-profile \
    --backends pallas --budget-s $((${OPS_S:-100} - 20)) --json $OUT/${P}_ops_$v.json > $OUT/${P}_ops_$v.txt 2>&1
echo "== ops $v rc=$? $((SECONDS - t0)) s"; tail -n 36 $OUT/${P}_ops_$v.txt | cut -c1-150
done
fi
