#!/usr/bin/env bash
# Session 9, H200 call 2 (issue 17): decode-sized launches chained by programmatic dependent launch (every
# shrink / expand / metadata launch waits for the kernel before it first, then lets the next one launch).
# GPU tests of the triton backend (the new chained-ops graph test among them), the compare on the four
# decode cases (triton), and the decode step with PDL and with LORA_TRITON_NO_PDL=1 (same run).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false LORA_GPU_BACKENDS=triton
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 120 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider -k triton > $R/gpu_tests.txt 2>&1
timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress --json $R/step_pdl.json \
    > $R/step_pdl.txt 2>&1
LORA_TRITON_NO_PDL=1 timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step_nopdl.json > $R/step_nopdl.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton --case 'llama3-8b-r*-decode-*' --no-progress \
    --json $R/compare_decode.json > $R/compare_decode.txt 2>&1
