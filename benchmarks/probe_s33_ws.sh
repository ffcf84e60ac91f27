#!/usr/bin/env bash
# Session 33, issue 17: does Triton's compiler-made warp specialization (tl.range(..., warp_specialize=True),
# Hopper, descriptor loads) close the gap to cuBLAS on the dense shapes of the prefill shrink and expand?
# (1) dense_reference.py: the rank-64 shrink1 / shrink3 GEMMs (8192 tokens), descriptor loads plain, with the K
# loop warp-specialized, persistent, persistent warp-specialized; cuBLAS beside. (2) expand_floor.py --persist:
# the dense expand loop through pointers against persistent descriptor loops, warp-specialized or not.
# Usage (device tool): bash benchmarks/probe_s33_ws.sh [PREFIX]
set -u
P=${1:-s33w}
nvidia-smi --query-gpu=name --format=csv,noheader
cd benchmarks
PYTHONPATH=.. timeout 280 python3 dense_reference.py --tokens 8192 --shapes "r64 shrink3,r64 shrink1" \
    --modes tma,ws,persist,persist-ws --json $OUT/${P}_dense.json 2>&1 | grep -v Warn | tee $OUT/${P}_dense.txt
PYTHONPATH=.. timeout 250 python3 expand_floor.py --persist --json $OUT/${P}_expand.json 2>&1 | grep -v Warn \
    | tee $OUT/${P}_expand.txt
