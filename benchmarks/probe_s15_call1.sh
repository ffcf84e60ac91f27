#!/usr/bin/env bash
# Session 15, H200 call 1. Issue 16: the persistent expand runs a block's further adapters (a segment boundary)
# as the steps of a second pipeline, added to their rows by TMA reduce-adds, instead of fetching them inside
# the tile's step (session 14: about 1 us of L2 round trip each, on the critical path). Same-run A/B/C:
# session 14's tree (carried as .ab/old), the first version (f505257, .ab/perrow: one reduce-add per row) and
# main (the rows' run as power-of-two boxes), pallas, on the crafted batches m1 (one adapter a block)
# and m20 (twenty blocks of two adapters) and on the prefill-8k / mixed cases, the expand family; then main's
# pallas GPU tests. Issue 17: what the simplest kernels cost inside a graph (benchmarks/launch_floor.py).
# Kernels lowered ahead on a CPU machine (benchmarks/pallas_prelower.py), both trees into one cache.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
L64() { printf '64%.0s+' $(seq 1 $1); }
M1="r=16,name=m1,segs=lens:$(L64 111)64"; M20="r=16,name=m20,segs=lens:$(L64 90)$(printf '20+44+%.0s' $(seq 1 21))20+44"
ab() {  # tree, tag, backends, time limit, ranks of the cases
    (cd $1 && PYTHONPATH=. timeout $4 python3 -m lora compare --quick --backends $3 --no-progress --json $R/$2.json \
        --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --shape "$M1" --shape "$M20" \
        --case "llama3-8b-$5-prefill-8k" --case "llama3-8b-$5-mixed" > $R/$2.txt 2>&1)
}
ab .ab/old old pallas 110 r16  # (rank 64: session 14's call 5 has these kernels' figures)
ab .ab/perrow perrow pallas 110 r16
ab . new pallas,triton 170 'r*'
PYTHONPATH=. timeout 130 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py \
    tests/gpu/test_graph_safety.py tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider \
    -k "pallas and not test_real_shapes" > $R/gpu_tests.txt 2>&1
PYTHONPATH=. timeout 40 python3 benchmarks/launch_floor.py --json $R/launch_floor.json > $R/launch_floor.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $R/gpu_tests.txt | cut -c1-200 | tail -8; cat $R/launch_floor.txt
tail -2 $R/old.txt $R/perrow.txt $R/new.txt
