#!/usr/bin/env bash
# Session 9, H200 call 5 (issue 17): the PDL layout chosen from calls 3-4 (shrinks launched plainly and letting
# the next kernel launch at their start; expands programmatic dependents; metadata kernel a dependent).
# GPU tests of the triton backend; the decode step with it and with LORA_TRITON_NO_PDL=1; the decode compare
# without PDL (per-op reference); the compare on every default case, both ranks (triton). Then a wider
# tuning run of the rank-16 prefill / mixed shrinks (100 plans a bucket, on top of the shipped table) and the
# compare of those cases with its table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false LORA_GPU_BACKENDS=triton
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call5.tar.gz r; }
trap pack EXIT
timeout 100 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider -k triton > $R/gpu_tests.txt 2>&1
timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress --json $R/step_pdl.json \
    > $R/step_pdl.txt 2>&1
LORA_TRITON_NO_PDL=1 timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step_nopdl.json > $R/step_nopdl.txt 2>&1
LORA_TRITON_NO_PDL=1 timeout 60 python3 -m lora compare --quick --backends triton --case 'llama3-8b-r*-decode-*' \
    --no-progress --json $R/compare_decode_nopdl.json > $R/compare_decode_nopdl.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton --no-progress --json $R/compare.json \
    > $R/compare.txt 2>&1
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 170 python3 -m lora tune --model llama3-8b --ranks 16 --regimes prefill,mixed --ops shrink1,shrink2,shrink3 \
    --max-candidates 100 --budget-s 150 --out $R/tables/ --no-progress > $R/tune_prefill_shrink.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 60 python3 -m lora compare --quick --backends triton \
    --case 'llama3-8b-r16-prefill-8k' --case 'llama3-8b-r16-mixed' --no-progress --json $R/compare_r16_prefill_tuned.json \
    > $R/compare_r16_prefill_tuned.txt 2>&1
