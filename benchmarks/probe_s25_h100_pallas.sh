#!/usr/bin/env bash
# Session 25, on the H100 (no H200 came): issue 16's five mixed rows over 1.15x triton on the H200 in session 19
# (r16 shrink3, expand; r64 shrink_down, expand_gate_up, gate_up) under the pallas backend's kernel-configuration
# overrides (benchmarks/pallas_sweep.py), mixed batch only (prefill-8k left for a later call), triton and the
# pallas defaults timed in the same run on the same card; every row checked against the float64 oracle.
# Usage (device tool): bash benchmarks/probe_s25_h100_pallas.sh
set -u
P=s25h3
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false
sweep() {  # rank, tunings
    local t0=$SECONDS
    PYTHONPATH=. timeout 230 python3 benchmarks/pallas_sweep.py --budget-s 190 \
        --cases llama3-8b-r$1-mixed --tunings $2 --json $R/${P}_r$1.json > $R/${P}_r$1.txt 2>&1
    echo "== r$1 sweep rc=$? $((SECONDS - t0)) s"; sed -n '/best pallas/,$p' $R/${P}_r$1.txt | cut -c1-170
}
sweep 64 default,bk128,bk64s8,ks2bk128s4,ks2bk64s6,ss2,ss3,ss6,pBn64,pBn256
sweep 16 default,bk128,bk128s6,bk64s8,ks2bk128s4,ss2,ss3,ss6,pBn64,es2
