#!/usr/bin/env bash
# Session 14, H200 call 1 (issue 16, mixed batches): why is the pallas shrink 1.3-1.5x triton's on the mixed case
# and not on prefill-8k? Hypothesis: a 64-row block holding three adapters runs two K loops (x read twice), so
# its CTA is the kernel's tail. Crafted compositions of 112 blocks (7,168 rows, the same bucket as prefill-8k):
# m30: two blocks of three segments (three adapters each); m1: every segment one block; m20: twenty blocks of
# two adapters. Rank 64: 132 against 128 one-block segments (8,448 rows: bucket 16,384, against 8,192).
# Plus the stream-K / bitwise / forced-plan triton GPU tests on the tree (session 13's last mend, not yet run).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
L64() { printf '64%.0s+' $(seq 1 $1); }
M3="$(L64 110)20+20+24+20+20+24"; M1="$(L64 111)64"; M2="$(L64 90)$(printf '20+44+%.0s' $(seq 1 21))20+44"
timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/r16.json --ops shrink1,shrink_down \
    --shape "r=16,name=m30,segs=lens:$M3" --shape "r=16,name=m1,segs=lens:$M1" --shape "r=16,name=m20,segs=lens:$M2" \
    > $R/r16.txt 2>&1
timeout 150 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/r64.json --ops shrink_down,expand \
    --shape "r=64,name=p128,segs=lens:$(L64 127)64" --shape "r=64,name=p132,segs=lens:$(L64 131)64" \
    > $R/r64.txt 2>&1
timeout 80 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -rfE -p no:cacheprovider \
    -k "triton and (stream or bitwise or forced)" > $R/gpu_tests.txt 2>&1
grep -E "pass|FAIL" $R/r16.txt | cut -c1-160; grep -E "pass|FAIL" $R/r64.txt | cut -c1-160; tail -2 $R/gpu_tests.txt
