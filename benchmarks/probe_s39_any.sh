#!/usr/bin/env bash
# Session 39, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). On another card: issue 16's trial of the split
# shrink without its early trigger (benchmarks/probe_s39_trigger.sh; carry .pallas-cache lowered as it says).
# Usage (device tool): bash benchmarks/probe_s39_any.sh
set -u
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
else
    bash benchmarks/probe_s39_trigger.sh s39t
fi
