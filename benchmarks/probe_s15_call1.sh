#!/usr/bin/env bash
# Session 15, H200 call 1. 1. The pallas GPU tests on session 14's final tree (its review mend, 8e5f010, was
# not run on a GPU). 2. Issue 17: what the simplest kernels cost inside a graph (benchmarks/launch_floor.py)
# against the decode bound. 3. Issue 16: where the persistent expand loses its time on blocks of two
# adapters: kernel times (decode_kernels.py) of the r16 expand on prefill-8k and mixed, persistent against one
# CTA per tile (pallas:tile), and Nsight Compute (full set, per-instruction stall samples) of the persistent
# expand on the crafted batches m1 (one adapter a block) and m20 (twenty blocks of two adapters).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 60 python3 benchmarks/launch_floor.py --json $R/launch_floor.json > $R/launch_floor.txt 2>&1
timeout 120 python3 benchmarks/decode_kernels.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed --ops expand \
    --backends triton,pallas,pallas:tile --json $R/expand_kernels.json > $R/expand_kernels.txt 2>&1
L64() { printf '64%.0s+' $(seq 1 $1); }
M1="r=16,name=m1,segs=lens:$(L64 111)64"; M20="r=16,name=m20,segs=lens:$(L64 90)$(printf '20+44+%.0s' $(seq 1 21))20+44"
prof() {
    local name=$1; shift
    timeout 120 ncu --clock-control none --profile-from-start off --set full --import-source no -o $R/$name \
        python3 benchmarks/ncu_probe.py "$@" > $R/ncu_$name.log 2>&1
    ncu -i $R/$name.ncu-rep --page details > $R/ncu_$name.txt 2>&1
    ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/src_$name.csv 2>&1
    gzip -f $R/src_$name.csv; rm -f $R/$name.ncu-rep
}
prof m1 "$M1" expand --backend pallas
prof m20 "$M20" expand --backend pallas
grep -E "^(FAILED|ERROR)|passed|failed" $R/gpu_tests.txt | cut -c1-200 | tail -8; cat $R/launch_floor.txt
grep -E "expand" $R/expand_kernels.txt | cut -c1-200 | head -20; grep -E "Duration|DRAM Throughput|SM Active" $R/ncu_m*.txt | head -20
