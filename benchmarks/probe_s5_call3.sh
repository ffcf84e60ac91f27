#!/usr/bin/env bash
# Session 5, H200 call 3: the persistent expand with full-rank x used as the wgmma operand, B masked only
# below full rank, x not copied, 256-wide tiles for ranks <= 32; the shrink's structure with / without wgmma.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 150 python3 benchmarks/pallas_expand_probe.py --json $R/expand_probe.json > $R/expand_probe.txt 2>&1
timeout 110 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_graphs.py tests/gpu/test_pallas_gpu.py -q -n 8 -rfE -p no:cacheprovider -k pallas > $R/gpu_tests.txt 2>&1
timeout 150 python3 benchmarks/pallas_sweep.py --budget-s 130 \
    --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed,llama3-8b-r64-prefill-8k \
    --tunings default,grid --json $R/pallas_sweep.json > $R/pallas_sweep.txt 2>&1
