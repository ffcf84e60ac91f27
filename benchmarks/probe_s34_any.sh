#!/usr/bin/env bash
# Session 34: an H200 runs the waiting H200 call (probe_s32_h200.sh: the descriptor twins tuned into the H200
# table, the full triton record with it); another card runs the peer comparison (probe_s34_peers.sh) with the
# peer adapters that exist in this tree.
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s34_any.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s32_h200.sh s34h; else bash benchmarks/probe_s34_peers.sh s34q "${1:-270}"; fi
