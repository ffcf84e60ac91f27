#!/usr/bin/env bash
# Session 43, one device call, any card (issue 16): the decode kernels launched as programmatic dependents do their
# metadata reads before the PDL wait, and start bringing their weights into L2 there, so those round trips overlap
# the kernel before. Three trees:
#   main    early reads and L2 prefetches (the tree as committed);
#   early   early reads only (main with benchmarks/probe_s43/prefetch.patch reversed, in a copy under /tmp);
#   before  both undone (early with benchmarks/probe_s43/early.patch reversed too).
# Steps:
#   tests    the pallas GPU suite, graph safety, the PDL chain (main);
#   step     the decode step: triton and pallas (main), pallas (before), pallas (early), pallas (main) again;
#   ops      benchmarks/decode_kernels.py, pallas, main and before (each op graph-batched).
# Carry .out/cp, .out/cn and .out/co: main's, early's and before's kernels lowered for the decode cases, each in
#   its tree: KERNELSTACK_PALLAS_CACHE_DIR=DIR pallas_prelower.py --cases 'llama3-8b-*-decode-*'
#   --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up
# Ran once, at bc2c09a (results/h100/s43). The prefetches were reverted after it (e799d73), so prefetch.patch no
# longer reverses on later trees: benchmarks/probe_s43_confirm.sh compares main with the kernels waiting first.
# Usage (device tool): bash benchmarks/probe_s43_early.sh [PREFIX]; STEPS: "tests step ops".
set -u
P=${1:-s43e}
DEFAULT_STEPS="tests step ops"
source benchmarks/probe_preamble.sh
MAIN=$PWD
for t in early before; do
    rm -rf /tmp/$t && mkdir -p /tmp/$t && cp -r lora benchmarks pyproject.toml /tmp/$t/
done
(cd /tmp/early && patch -s -R -p1 < $MAIN/benchmarks/probe_s43/prefetch.patch) && echo "early tree: patched back"
(cd /tmp/before && patch -s -R -p1 < $MAIN/benchmarks/probe_s43/prefetch.patch \
    && patch -s -R -p1 < $MAIN/benchmarks/probe_s43/early.patch) && echo "before tree: patched back"
declare -A CACHE=([main]=cp [early]=cn [before]=co)
in_tree() {  # in_tree main|early|before CMD...: CMD in that tree with its lowered kernels
    local t=$1; shift
    (export KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/${CACHE[$t]} PYTHONPATH=.:benchmarks
     if [ $t = main ]; then cd $MAIN; else cd /tmp/$t; fi
     "$@")
}
if want tests; then
t0=$SECONDS
in_tree main timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error|FAILED" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
if want step; then
for v in main before early main2; do
t0=$SECONDS
in_tree ${v%2} timeout 120 python3 -m lora compare --step --quick \
    --backends $([ $v = main ] && echo triton,)pallas --no-progress --json $OUT/${P}_step_$v.json > $OUT/${P}_step_$v.txt 2>&1
echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|Error" $OUT/${P}_step_$v.txt | cut -c1-110
done
fi
if want ops; then
for v in main before; do
[ $SECONDS -gt ${OPS_UNTIL_S:-440} ] && { echo "== ops $v: skipped (no time left in the call)"; continue; }
t0=$SECONDS
in_tree $v timeout ${OPS_S:-60} python3 benchmarks/decode_kernels.py --no-profile \
    --backends pallas --budget-s $((${OPS_S:-60} - 20)) --json $OUT/${P}_ops_$v.json > $OUT/${P}_ops_$v.txt 2>&1
echo "== ops $v rc=$? $((SECONDS - t0)) s"; tail -n 36 $OUT/${P}_ops_$v.txt | cut -c1-150
done
fi
