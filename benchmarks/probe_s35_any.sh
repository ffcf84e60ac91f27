#!/usr/bin/env bash
# Session 35: an H200 runs the peer comparison there (probe_s34_peers.sh, every peer, both ranks); another card
# measures the one peer not yet measured on a GPU, SGLang's csgmv backend with chunks of 128, beside triton.
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s35_any.sh [SECONDS_PER_RANK]
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s34_peers.sh s35h "${1:-270}"; exit; fi
echo "$GPU: triton beside peer-sglang-csgmv128"
BACKENDS=triton,peer-sglang-csgmv128 bash benchmarks/probe_s34_peers.sh s35c "${1:-270}"
