#!/usr/bin/env bash
# Session 39, first call, any card. On an H200: issue 17's geometry tune of the H200 table first
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). Then, on any card, the GPU tests that session 38's
# cheaper pallas prepare had not run: graph safety (replays probe unrelated memory, two streams, no allocation after
# warm-up, step graphs replaying new batches written in place), the graph tests and the pallas GPU suite.
# Usage (device tool): bash benchmarks/probe_s39_call1.sh
set -u
source benchmarks/probe_preamble.sh
if echo "$GPU" | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
fi
t0=$SECONDS
PYTHONPATH=. timeout ${TEST_S:-330} python3 -m pytest -q -x -n 8 -p no:cacheprovider tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py tests/gpu/test_pallas_gpu.py > $OUT/s39_tests.txt 2>&1
echo "== tests rc=$? $((SECONDS - t0)) s"; tail -n 15 $OUT/s39_tests.txt | cut -c1-200
