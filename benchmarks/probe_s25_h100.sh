#!/usr/bin/env bash
# Session 25: the H200 did not start (twice); an H100 did. What needs a GPU but not the H200 in particular:
# (1) the session-24 GPU tests, never run on a GPU yet: the partials pair (bf16, bitwise against the plain pair,
# graph replay) and the graph-safety probe of unrelated memory for triton's gate-up partials pair; (2) the
# launch floor's one-pass reads; (3) the partials pair split 2/4/8 against the plain pair on the decode qkv /
# gate-up rows (relative numbers: the shipped H100 table's plan, on the H100).
# Usage (device tool): bash benchmarks/probe_s25_h100.sh
set -u
P=s25h
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
t0=$SECONDS
PYTHONPATH=. timeout 220 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_triton_fused_decode.py \
    "tests/gpu/test_graph_safety.py::test_replayed_shrink_never_writes_freed_memory" > $R/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; tail -n 4 $R/${P}_gpu_tests.txt | cut -c1-200
t0=$SECONDS
PYTHONPATH=. timeout 110 python3 benchmarks/launch_floor.py --json $R/${P}_launch_floor.json > $R/${P}_launch_floor.txt 2>&1
echo "== launch floor rc=$? $((SECONDS - t0)) s"; cut -c1-150 $R/${P}_launch_floor.txt
t0=$SECONDS
PYTHONPATH=. timeout 110 python3 benchmarks/plan_probe.py --cases llama3-8b-r16-decode-64,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64,llama3-8b-r64-decode-256 \
    --op qkv,gate_up --checks 3 --plan table --plan 'FusedPlan(16, 16, 1, 32, 1, fuse=False)' \
    --plan 'FusedPlan(16, 16, 2, 32, 1, fuse=False, partials=True)' \
    --plan 'FusedPlan(16, 16, 4, 32, 1, fuse=False, partials=True)' \
    --plan 'FusedPlan(16, 16, 8, 32, 1, fuse=False, partials=True)' \
    --json $R/${P}_partials.json > $R/${P}_partials.txt 2>&1
echo "== partials pair rc=$? $((SECONDS - t0)) s"; cut -c1-160 $R/${P}_partials.txt
