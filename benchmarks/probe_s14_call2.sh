#!/usr/bin/env bash
# Session 14, H200 call 2 (issue 16): the block shrink runs a block's extra K-loop units (three or more
# adapters in its rows) on the CTAs of the bucket's blocks without rows, each CTA storing only its adapters'
# rows. 1. call 1's crafted compositions again (m30: two three-adapter blocks; m1: none; m20: twenty
# two-adapter blocks; m1t: m1 with a partial last block), plus the expand, qkv and rank 64; 2. the compare of the prefill-8k and mixed cases, both ranks,
# both backends; 3. the pallas GPU tests. Kernels lowered ahead on a CPU machine (benchmarks/pallas_prelower.py).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
L64() { printf '64%.0s+' $(seq 1 $1); }
M3="$(L64 110)20+20+24+20+20+24"; M1="$(L64 111)64"; M2="$(L64 90)$(printf '20+44+%.0s' $(seq 1 21))20+44"
timeout 180 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/crafted.json \
    --ops shrink1,shrink_down,expand,qkv --shape "r=16,name=m30,segs=lens:$M3" --shape "r=16,name=m1,segs=lens:$M1" \
    --shape "r=16,name=m20,segs=lens:$M2" --shape "r=16,name=m1t,segs=lens:$(L64 111)49" \
    --shape "r=64,name=m30r64,segs=lens:$M3" > $R/crafted.txt 2>&1
timeout 240 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $R/compare.txt 2>&1
timeout 130 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
grep -E "pass|FAIL|wrong" $R/crafted.txt | cut -c1-150; tail -3 $R/compare.txt; tail -3 $R/gpu_tests.txt
