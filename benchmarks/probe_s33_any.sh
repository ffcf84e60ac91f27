#!/usr/bin/env bash
# Session 33: whichever card comes. An H200 runs the waiting H200 call (probe_s32_h200.sh: the descriptor twins
# tuned, the full triton record with that table); another card runs the warp-specialization probe
# (probe_s33_ws.sh).
# Usage (device tool): bash benchmarks/probe_s33_any.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s32_h200.sh s33h; else bash benchmarks/probe_s33_ws.sh s33w; fi
