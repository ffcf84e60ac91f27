#!/usr/bin/env bash
# Session 20, H200 call 2 (issue 16): call 1 found jax's warp-specialized Hopper matmul, on the dense rank-64
# QKV-sized shrink (8448 x 4096 @ 4096 x 128) with the block shrink's own tile (64 rows, 128-deep K, three
# stages), at 22.1 us where the block shrink takes ~32. Two cheaper suspects first: bytes in flight (the block
# shrink's pipeline releases a slot one step late: S-1 of S stages in flight) and the K-step depth.
#   main / bk64 (64-deep steps, as many stages as fit) / wait0 (c2_wait0.patch: each step waits for its own
#   wgmma and releases its slot at once: S in flight) / wait0 + bk64; and the dense one-segment shape.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s20c2.tar.gz r; }
trap pack EXIT
mkdir -p $W/wait0 && cp -r lora $W/wait0/ && patch -s -p1 -d $W/wait0 < benchmarks/probe_s20/c2_wait0.patch
dk() {  # name, tree, backends
    (cd $2 && PYTHONPATH=$2:$PWD/benchmarks timeout 200 python3 $OLDPWD/benchmarks/decode_kernels.py --no-profile \
        --budget-s 190 --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --ops shrink1,shrink2,shrink3,shrink_down \
        --backends $3 --json $R/s20c2_$1.json > $R/s20c2_$1.txt 2>&1)
    grep "\] llama" $R/s20c2_$1.txt | cut -c1-100
}
dk main $PWD triton,pallas,pallas:bk64
dk wait0 $W/wait0 pallas,pallas:bk64
for t in main wait0; do
    d=$PWD; [ $t = wait0 ] && d=$W/wait0
    (cd $d && PYTHONPATH=$d timeout 120 python3 -m lora compare --quick --backends triton,pallas --no-progress \
        --ops shrink1,shrink2,shrink3 --shape 'r=64,segs=prefill:8448/1,name=dense-r64-8448' \
        --json $R/s20c2_dense_$t.json > $R/s20c2_dense_$t.txt 2>&1)
    echo "== dense $t"; grep "\] " $R/s20c2_dense_$t.txt | cut -c1-110
done
