#!/usr/bin/env bash
# Session 19, H200 call 2 (issue 16): the persistent expand with three cuts from call 1's instruction profile
# (main): a boundary adapter's x fetched as the wgmma operand where its slice starts on a tile; the steps'
# tiles kept in the ring (no integer division per step); the rank-below-tile masks in one branch. The
# issue's compare on the prefill-8k and mixed cases, both ranks, both backends; then the variant
# c2_reduce.patch (each tile's update added to base by a TMA reduce-add: no base tile in the pipeline),
# pallas only, the ops with an expand; then Nsight Compute on main's r64 mixed QKV expand.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s19c2.tar.gz r; }
trap pack EXIT
PYTHONPATH=. timeout 280 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/s19c2_compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $R/s19c2_compare.txt 2>&1
grep "\] llama" $R/s19c2_compare.txt | cut -c1-100
mkdir -p $W/reduce && cp -r lora $W/reduce/ && patch -s -p1 -d $W/reduce < benchmarks/probe_s19/c2_reduce.patch
echo "== reduce"
(cd $W/reduce && PYTHONPATH=$W/reduce timeout 150 python3 -m lora compare --quick --backends pallas --no-progress \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' \
    --json $R/s19c2_reduce.json > $R/s19c2_reduce.txt 2>&1)
grep "\] llama" $R/s19c2_reduce.txt | cut -c1-100
PYTHONPATH=. timeout 120 ncu --clock-control none --profile-from-start off --set full --import-source no \
    -o $W/ncu_mixed python3 benchmarks/ncu_probe.py llama3-8b-r64-mixed expand_qkv --backend pallas \
    > $R/s19c2_ncu_mixed.log 2>&1
ncu -i $W/ncu_mixed.ncu-rep --page details > $R/s19c2_ncu_mixed.txt 2>&1
ncu -i $W/ncu_mixed.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $R/s19c2_src_mixed.csv.gz
grep -E "Duration|Issued Instructions  " $R/s19c2_ncu_mixed.txt | head -4
