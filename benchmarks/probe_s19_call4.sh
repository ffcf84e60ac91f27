#!/usr/bin/env bash
# Session 19, H200 call 4 (issue 16): main at the session's expand changes (call 2's compare is their
# prefill-8k / mixed record): the pallas GPU tests, then the compare on the decode cases, both ranks,
# both backends. Then variant c4_early_loads.patch (the merge loads the row slots and the base tile before
# it reads the accumulator, which waits for the wgmma) against main, pallas only, the expand ops.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s19c4.tar.gz r; }
trap pack EXIT
PYTHONPATH=. timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/s19c4_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $R/s19c4_gpu_tests.txt | cut -c1-200 | tail -8
PYTHONPATH=. timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --json $R/s19c4_compare_decode.json --case 'llama3-8b-r*-decode-*' > $R/s19c4_compare_decode.txt 2>&1
tail -n 2 $R/s19c4_compare_decode.txt
mkdir -p $W/early && cp -r lora $W/early/ && patch -s -p1 -d $W/early < benchmarks/probe_s19/c4_early_loads.patch
for v in main early; do
    d=$PWD; [ $v = main ] || d=$W/$v
    echo "== $v"
    (cd $d && PYTHONPATH=$d timeout 100 python3 -m lora compare --quick --backends pallas --no-progress \
        --ops expand,expand_qkv,expand_gate_up --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' \
        --json $R/s19c4_$v.json > $R/s19c4_$v.txt 2>&1)
    grep "\] llama" $R/s19c4_$v.txt | cut -c1-100
done
