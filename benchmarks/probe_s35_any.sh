#!/usr/bin/env bash
# Session 35: an H200 runs the peer comparison there (probe_s34_peers.sh, every peer, both ranks); another card
# re-tunes the prefill and mixed buckets per segment geometry (probe_s35_geometry.sh tune), then runs the GPU test
# that a prefill batch launches its geometry's plan.
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s35_any.sh [SECONDS_PER_RANK]
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s34_peers.sh s35h "${1:-270}"; exit; fi
echo "$GPU: the prefill / mixed buckets re-tuned per segment geometry"
BUDGET=${BUDGET:-360} bash benchmarks/probe_s35_geometry.sh tune
PYTHONPATH=. timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_tuned.py -k segment_geometry \
    2>&1 | tail -3 | tee $OUT/s35_gpu_tests.txt
