#!/usr/bin/env bash
# Session 4, H200 call 1: issue 17 (triton: PDL for the two-launch fused ops, a longer prefill tune over a
# wider plan grid) and issue 16 (pallas: kernel-configuration sweep on prefill). Everything lands in $OUT/r,
# packed as $OUT/call1.tar.gz (the device returns few files).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
R=$OUT/r; mkdir -p $R/tables
pack() { tar -C $OUT -czf $OUT/call1.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $R/gpu.txt 2>&1
# 1. triton decode: PDL (now the default of the two-launch qkv / gate-up) against LORA_TRITON_NO_PDL=1, same run
timeout 100 python3 -m lora compare --quick --backends triton --case '*decode*' --no-progress --json $R/decode_pdl.json > $R/decode_pdl.txt 2>&1
LORA_TRITON_NO_PDL=1 timeout 60 python3 -m lora compare --quick --backends triton --case '*decode*' --ops qkv,gate_up --no-progress --json $R/decode_nopdl.json > $R/decode_nopdl.txt 2>&1
# 2. pallas: configuration sweep on prefill (r16, r64)
timeout 170 python3 benchmarks/pallas_sweep.py --budget-s 150 --json $R/pallas_sweep.json > $R/pallas_sweep.txt 2>&1
# 3. triton prefill/mixed: tune over the widened grid, then compare with that table
timeout 140 python3 -m lora tune --model llama3-8b --regimes prefill,mixed --budget-s 120 --max-candidates 40 --out $R/tables/ --no-progress > $R/tune.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 80 python3 -m lora compare --quick --backends triton --case '*prefill*' --case '*mixed*' --no-progress --json $R/prefill_tuned.json > $R/prefill_tuned.txt 2>&1
# 4. the triton GPU tests with PDL on (graphs, two streams, fused decode)
timeout 90 python3 -m pytest tests/gpu -q -x -k 'triton or graph' -n 8 -p no:cacheprovider > $R/gpu_tests.txt 2>&1
echo done >> $R/gpu.txt
