#!/usr/bin/env bash
# Session 13, H200 call 5 (issue 17): where a stream-K shrink program loses its time. Call 4: with the K loop
# compiled like the plain kernel's, the 128-row stream-K plan still takes 46 us for the r64 QKV shrink where
# its per-multiprocessor rate in the plain kernel (73 programs, 46 us for twice the work per program) predicts
# ~25 us. Nsight Compute, full set, with per-instruction stall samples (source page, SASS), for the stream-K
# plan and the two plain plans (shipped 128-row; 64-row BLOCK_K=128, one tile per program).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call5.tar.gz r; }
trap pack EXIT
prof() {
    local name=$1; shift
    timeout 150 ncu --clock-control none --profile-from-start off -k 'regex:_shrink_kernel' --set full \
        --import-source no -o $R/$name python3 benchmarks/ncu_probe.py "$@" > $R/ncu_$name.log 2>&1
    ncu -i $R/$name.ncu-rep --page details > $R/ncu_$name.txt 2>&1
    ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/src_$name.csv 2>&1
    rm -f $R/$name.ncu-rep
}
prof sk1_128 llama3-8b-r64-prefill-8k shrink3 --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)'
prof plain_128 llama3-8b-r64-prefill-8k shrink3
prof plain_64 llama3-8b-r64-prefill-8k shrink3 --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3)'
ls -la $R; grep -E "Duration|SM Active Cycles|DRAM Throughput" $R/ncu_*.txt
