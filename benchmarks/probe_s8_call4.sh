#!/usr/bin/env bash
# Session 8, H200 call 4 (the last device minutes): the decode expand now gathers only where calls 2-3 measured it
# faster (several row blocks and >= 64 column tiles: 8 tiles per CTA; stacked slices of rank >= 64 with fewer
# tiles: 4), else session 7's kernel. GPU contract tests of the stacked ops at ranks 64 / 128 (gathering), the
# issue's compare on the Llama decode cases (both ranks, triton and pallas), the decode step.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 60 python3 -m pytest tests/gpu/test_contract_gpu.py -q -n 8 -rfE -p no:cacheprovider \
    -k "pallas and (r64 or r128) and (qkv or gate_up)" > $R/gpu_tests.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton,pallas --case 'llama3-8b-r*-decode-*' --no-progress \
    --json $R/compare_decode.json > $R/compare_decode.txt 2>&1
timeout 110 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
