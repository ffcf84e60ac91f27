#!/usr/bin/env bash
# Session 35: an H200 runs the peer comparison there (probe_s34_peers.sh, every peer, both ranks); another card
# re-tunes the prefill and mixed buckets per segment geometry (probe_s35_geometry.sh tune).
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s35_any.sh [SECONDS_PER_RANK]
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s34_peers.sh s35h "${1:-270}"; exit; fi
echo "$GPU: the prefill / mixed buckets re-tuned per segment geometry"
bash benchmarks/probe_s35_geometry.sh tune
