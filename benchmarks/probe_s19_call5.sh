#!/usr/bin/env bash
# Session 19, H200 call 5 (issue 16), run with benchmarks/probe_s19/c5_gather_chain.patch applied to main (git apply;
# reverted after: no gain): the gathering decode expand with a shorter chain of round trips: the
# chunk's row list comes by TMA while its slot, row count and rank (now in the chunk table) are read, and
# the pipeline's first B tiles are in flight while the chunk's x rows come. The pallas GPU tests, then the
# issue's compare on the decode cases, both ranks, both backends.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s19c5.tar.gz r; }
trap pack EXIT
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/s19c5_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $R/s19c5_gpu_tests.txt | cut -c1-200 | tail -8
timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --json $R/s19c5_compare_decode.json --case 'llama3-8b-r*-decode-*' > $R/s19c5_compare_decode.txt 2>&1
grep "\] llama" $R/s19c5_compare_decode.txt | grep "pallas" | cut -c1-100
