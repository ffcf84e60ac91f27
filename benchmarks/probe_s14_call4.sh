#!/usr/bin/env bash
# Session 14, H200 call 4 (issue 16): call 2's tree with (a) the fix of a block without adapters (its CTA
# wrote nothing: call 3's four GPU test failures), (b) the block shrink's extra units only for outputs up to
# 128 columns (the rank-64 QKV shrink was 42 -> 48 us with them compiled in), (c) the persistent expand
# fetching a block's second adapter's tiles a step ahead (call 2: twenty two-adapter blocks made the r16
# expand 58.3 us against 36.7 with none). 1. the crafted compositions; 2. the compare of the prefill-8k and
# mixed cases, both ranks, both backends; 3. the pallas GPU tests. Kernels lowered ahead on a CPU machine.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
L64() { printf '64%.0s+' $(seq 1 $1); }
M3="$(L64 110)20+20+24+20+20+24"; M1="$(L64 111)64"; M2="$(L64 90)$(printf '20+44+%.0s' $(seq 1 21))20+44"
timeout 130 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/crafted.json \
    --ops shrink1,expand,qkv --shape "r=16,name=m30,segs=lens:$M3" --shape "r=16,name=m1,segs=lens:$M1" \
    --shape "r=16,name=m20,segs=lens:$M2" --shape "r=16,name=m1t,segs=lens:$(L64 111)49" \
    --shape "r=64,name=m20r64,segs=lens:$M2" > $R/crafted.txt 2>&1
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 260 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $R/compare.txt 2>&1
grep -E "pass|FAIL|wrong" $R/crafted.txt | cut -c1-120; grep -E "^(FAILED|ERROR)|passed|failed" $R/gpu_tests.txt | cut -c1-200 | tail -8
tail -3 $R/compare.txt
