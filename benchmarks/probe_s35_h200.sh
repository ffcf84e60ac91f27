#!/usr/bin/env bash
# Session 35, issues 17 and 16's H200 table: on an H200 only, the prefill / mixed buckets tuned per segment geometry
# (probe_s35_geometry.sh tune: descriptor twins of every shrink plan among the candidates), then shipped table
# against tuned table and beside the best peers (probe_s35_after.sh). Another card: nothing runs.
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s35_h200.sh
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: nothing run"; exit 0; }
BUDGET=${BUDGET:-150} bash benchmarks/probe_s35_geometry.sh tune s35h
TABLES=$OUT/tables bash benchmarks/probe_s35_after.sh s35ha
