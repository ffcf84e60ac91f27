#!/usr/bin/env bash
# Session 42, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). On another card: issue 16's first GPU run of the
# shipped compiled metadata builder (benchmarks/probe_s41_fused.sh: the pallas GPU suite, graph safety, the PDL
# chain, prepare compiled / op by op, the decode step; carry .pallas-cache).
# Usage (device tool): bash benchmarks/probe_s42_any.sh [PREFIX]
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
else
    bash benchmarks/probe_s41_fused.sh "${1:-s42f}"
fi
