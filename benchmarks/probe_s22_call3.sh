#!/usr/bin/env bash
# Issue 17: re-tune Triton's rank-64 QKV-sized prefill shrinks (shrink2: 128 columns, shrink3: 192) on the H200
# with every candidate plan (200 a bucket; the shipped table timed 150 and 40), starting from the shipped table
# (its other entries kept), then the compare on those ops and the QKV op with the new table as the user's.
# Call 2 (benchmarks/triton_tma_check.sh) found dense 128-row / K-split-2 tiles 10-25% faster than the
# shipped plans on one segment. Usage (device tool): bash benchmarks/probe_s22_call3.sh
set -u
P=s22c3
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export KERNELSTACK_TUNE_DIR=$R/tables
cp lora/triton/tables/nvidia-h200.json $R/tables/nvidia-h200.json
PYTHONPATH=. timeout 400 python3 -m lora tune --model llama3-8b --ranks 64 --regimes prefill,mixed --ops shrink2,shrink3 \
    --max-candidates 200 --budget-s 330 --out $R/tables/ --no-progress > $R/${P}_tune.txt 2>&1
tail -6 $R/${P}_tune.txt
PYTHONPATH=. timeout 150 python3 -m lora compare --case llama3-8b-r64-prefill-8k --case llama3-8b-r64-mixed \
    --ops shrink2,shrink3,qkv --backends triton --json $R/${P}_compare.json --no-progress > $R/${P}_compare.txt 2>&1
grep -E "shrink|qkv" $R/${P}_compare.txt | cut -c1-140
