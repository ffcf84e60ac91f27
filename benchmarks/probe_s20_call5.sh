#!/usr/bin/env bash
# Session 20, H200 call 5: call 4's launch floor again, its TMA round-trip kernels fixed (call 4's launcher
# kept only the tensors' pointers: the tensors were freed before the graph ran, an illegal address).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 200 python3 benchmarks/launch_floor.py --pallas --json $OUT/s20c5_launch_floor.json \
    > $OUT/s20c5_launch_floor.txt 2>&1
grep -v Warn $OUT/s20c5_launch_floor.txt | tail -22
