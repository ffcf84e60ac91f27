#!/usr/bin/env bash
# Session 43, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). On another card: issue 16's adapter probe
# (benchmarks/probe_s42_adapters.sh: decode kernels against the adapters a 64-row block holds, and the stacked
# cuBLAS yardstick), reading its kernels from .out/ac, lowered as probe_s42_adapters.sh's header says with
# KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.out/ac (11 MB: it fits the carry limit beside the peers' files).
# Usage (device tool, carry .peers/src .peers/site .out/ac): bash benchmarks/probe_s43_any.sh [PREFIX]
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
else
    [ -d .out/ac ] && rm -rf .pallas-cache && cp -r .out/ac .pallas-cache
    bash benchmarks/probe_s42_adapters.sh "${1:-s43a}"
fi
