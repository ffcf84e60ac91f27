#!/usr/bin/env bash
# Session 20, H200 call 1 (issues 16 and 17, diagnosis): are the rank-64 prefill shrinks bound by their
# weight tiles' reads from L2? jax's Hopper matmul on the dense shrink shapes, with and without a cluster of
# two CTAs multicasting each weight tile (benchmarks/multicast_probe.py).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 420 python3 benchmarks/multicast_probe.py --json $OUT/s20c1_multicast.json \
    > $OUT/s20c1_multicast.txt 2>&1
grep '^{' $OUT/s20c1_multicast.txt | grep -v error | cut -c1-170
tail -3 $OUT/s20c1_multicast.txt
