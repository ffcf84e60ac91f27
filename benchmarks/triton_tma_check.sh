#!/usr/bin/env bash
# Issue 17: what TMA loads and warp specialization buy a Triton kernel on the rank-64 prefill shrinks' dense
# shapes (benchmarks/triton_tma_probe.py, written in session 22 without a GPU and checked only in Triton's
# interpreter: `python benchmarks/triton_tma_probe.py --check-cpu`). One device call, about 5 minutes: 70
# configurations (pointer / descriptor loads, per-tile / persistent grids, with and without warp
# specialization; 64-row tiles over all of K, 128-row tiles over half of it) and Triton's LoRA shrink on the
# same rows as one segment, each checked against a float32 matmul and timed one call among many in a CUDA graph.
# What decides it: a descriptor variant well under the LoRA shrink's time (session 20: 23.0 / 33.3 / 45.8 us
# for N = 64 / 128 / 192, against jax's warp-specialized matmul at 18.9 / 20.5 / 22.7) is worth building into
# the shrink's prefill path, whose row tiles then have to lie inside one segment.
# Usage (device tool): bash benchmarks/triton_tma_check.sh s22c2  (prefix of the files)
set -u
P=${1:-tma}
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
PYTHONPATH=. timeout 540 python3 benchmarks/triton_tma_probe.py --budget-s 480 --json $R/${P}_triton_tma.json \
    > $R/${P}_triton_tma.txt 2>&1
grep -E "lora-triton|MISMATCH|failed" $R/${P}_triton_tma.txt | cut -c1-110
awk '/ us /{ if (!($1 in b) || $3 + 0 < b[$1]) { b[$1] = $3 + 0; n[$1] = $2 } } END { for (k in b) print "best", k, n[k], b[k], "us" }' $R/${P}_triton_tma.txt
