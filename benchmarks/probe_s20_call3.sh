#!/usr/bin/env bash
# Session 20, H200 call 3 (issue 16): call 2 found the rank-64 pallas shrinks as fast as jax's own matmul on
# one segment (8448 rows: shrink2 23.5 us, shrink3 32.8) but 32.0 / 42.2 on prefill-8k (8 uneven segments:
# 7 blocks where two adapters meet). What one such block costs (two segments, the boundary on a block edge
# or inside a block), and whether the K-split block shrink (finer units, two waves) balances it.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s20c3.tar.gz r; }
trap pack EXIT
PYTHONPATH=.:benchmarks timeout 260 python3 benchmarks/decode_kernels.py --no-profile --budget-s 250 \
    --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --ops shrink2,shrink3 \
    --backends pallas,pallas:ks2,pallas:ks4,pallas:ks2bk64 --json $R/s20c3_ksplit.json > $R/s20c3_ksplit.txt 2>&1
grep "\] llama" $R/s20c3_ksplit.txt | cut -c1-100
for sh in 'lens:4096+4352,name=edge' 'lens:4100+4348,name=inside' 'lens:1024+1024+1024+1024+1024+1024+1024+1280,name=edges8'; do
    PYTHONPATH=. timeout 100 python3 -m lora compare --quick --backends triton,pallas --no-progress \
        --ops shrink2,shrink3 --shape "r=64,segs=$sh" --json $R/s20c3_${sh##*=}.json > $R/s20c3_${sh##*=}.txt 2>&1
    echo "== $sh"; grep "\] " $R/s20c3_${sh##*=}.txt | cut -c1-110
done
