#!/usr/bin/env bash
# Session 20, H200 call 4 (issues 16 and 17, design check; then the pallas launch floor): what 128-row tiles split two ways in K would
# reach on the rank-64 shrinks, without the partial-tile sum: jax's Hopper matmul (two consumer warpgroups of
# 64 rows sharing each weight tile) on 16896 x K/2 @ K/2 x N, i.e. 132 tiles of 128 rows, each reading half
# of K: the same x bytes as the 8448-row shrink, half the weight bytes per row.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 300 python3 benchmarks/multicast_probe.py --m 16896 --shapes 2048x192,2048x128,2048x64,7168x64 \
    --clusters 1 --json $OUT/s20c4_halfk.json > $OUT/s20c4_halfk.txt 2>&1
grep '^{' $OUT/s20c4_halfk.txt | grep -v error | cut -c1-150
# Issue 16's decode rows: what the simplest Mosaic GPU kernels cost inside a CUDA graph when launched the way
# the pallas backend launches (against triton's empty kernel and plain reads, benchmarks/launch_floor.py).
PYTHONPATH=. timeout 200 python3 benchmarks/launch_floor.py --pallas --json $OUT/s20c4_launch_floor.json \
    > $OUT/s20c4_launch_floor.txt 2>&1
cat $OUT/s20c4_launch_floor.txt | grep -v Warn | tail -20
