#!/usr/bin/env bash
# Session 5, H200 call 4: the persistent expand with a block's further adapters added in its pipeline step and
# column-major tile runs: the compare on the prefill / mixed cases (both ranks, both backends), then the
# pallas GPU contract and graph tests.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 200 python3 -m lora compare --quick --backends triton,pallas --case '*prefill*' --case '*mixed*' \
    --no-progress --json $R/compare.json > $R/compare.txt 2>&1
timeout 75 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider \
    -k pallas > $R/gpu_tests.txt 2>&1
