#!/usr/bin/env bash
# Session 5, H200 call 2: where the pallas expand's time goes (benchmarks/pallas_expand_probe.py, JAX only),
# and the triton PDL GPU test (its second fix: the offsets tensor is made before the capture).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 200 python3 benchmarks/pallas_expand_probe.py --json $R/expand_probe.json > $R/expand_probe.txt 2>&1
timeout 80 python3 -m pytest tests/gpu/test_triton_pdl.py -q -n 4 -rfE -p no:cacheprovider > $R/gpu_pdl.txt 2>&1
