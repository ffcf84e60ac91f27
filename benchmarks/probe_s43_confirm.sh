#!/usr/bin/env bash
# Session 43, one device call, any card (issue 16): the decode step again, main (its decode kernels read their
# metadata before the PDL wait; c8b9787) against the same kernels waiting first (main with
# benchmarks/probe_s43/early.patch reversed, in a copy of the tree under /tmp), interleaved, after the first call
# (benchmarks/probe_s43_early.sh, results/h100/s43) measured each once; then each op graph-batched on main.
#   step     `python -m lora compare --step --quick --backends pallas`, trees in the order of $VARIANTS
#            (default "main before main before"), triton once at the start;
#   ops      benchmarks/decode_kernels.py, triton and pallas, main.
# Carry .out/cn and .out/co: main's and before's kernels lowered for the decode cases, each in its tree
#   (see benchmarks/probe_s43_early.sh).
# Usage (device tool): bash benchmarks/probe_s43_confirm.sh [PREFIX]; STEPS: "step ops".
set -u
P=${1:-s43c}
DEFAULT_STEPS="step ops"
source benchmarks/probe_preamble.sh
MAIN=$PWD
rm -rf /tmp/before && mkdir -p /tmp/before && cp -r lora benchmarks pyproject.toml /tmp/before/
(cd /tmp/before && patch -s -R -p1 < $MAIN/benchmarks/probe_s43/early.patch) && echo "before tree: patched back"
declare -A CACHE=([main]=cn [before]=co)
in_tree() {  # in_tree main|before CMD...: CMD in that tree with its lowered kernels
    local t=$1; shift
    (export KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/${CACHE[$t]} PYTHONPATH=.:benchmarks
     if [ $t = main ]; then cd $MAIN; else cd /tmp/$t; fi
     "$@")
}
if want step; then
k=0
for v in ${VARIANTS:-main before main before}; do
k=$((k + 1)); t0=$SECONDS
in_tree $v timeout 120 python3 -m lora compare --step --quick \
    --backends $([ $k = 1 ] && echo triton,)pallas --no-progress --json $OUT/${P}_step${k}_$v.json > $OUT/${P}_step${k}_$v.txt 2>&1
echo "== step $k $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|Error" $OUT/${P}_step${k}_$v.txt | cut -c1-110
done
fi
if want ops; then
t0=$SECONDS
in_tree main timeout ${OPS_S:-100} python3 benchmarks/decode_kernels.py --no-profile \
    --backends triton,pallas --budget-s $((${OPS_S:-100} - 20)) --json $OUT/${P}_ops_main.json > $OUT/${P}_ops_main.txt 2>&1
echo "== ops main rc=$? $((SECONDS - t0)) s"; tail -n 40 $OUT/${P}_ops_main.txt | cut -c1-150
fi
