#!/usr/bin/env bash
# Session 24 had no device; written for the next session that has one (H200). Issue 16: the five mixed rows
# still over 1.15x triton (session 19: r16 shrink3 1.18, expand 1.153; r64 shrink_down 1.23, expand_gate_up 1.17,
# gate_up 1.16) under the pallas backend's kernel-configuration overrides (benchmarks/pallas_sweep.py; the
# sweep last ran in sessions 5-6, on kernels since rewritten), on the mixed batch and on prefill-8k (a new
# default must not lose prefill). Every row is checked against the float64 oracle; triton in the same run.
# Usage (device tool): bash benchmarks/probe_s24_call3.sh
set -u
P=s24c3
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false
sweep() {  # rank, tunings: the mixed batch and prefill-8k of that rank
    local t0=$SECONDS
    PYTHONPATH=. timeout 290 python3 benchmarks/pallas_sweep.py --budget-s 260 \
        --cases llama3-8b-r$1-mixed,llama3-8b-r$1-prefill-8k --tunings $2 \
        --json $R/${P}_r$1.json > $R/${P}_r$1.txt 2>&1
    echo "== r$1 sweep rc=$? $((SECONDS - t0)) s"; sed -n '/best pallas/,$p' $R/${P}_r$1.txt | cut -c1-170
}
sweep 16 default,bk128,bk128s6,bk64s8,ks2bk128s4,ss2,ss3,ss6,pBn64,es2
sweep 64 default,bk128,bk64s8,ks2bk128s4,ks2bk64s6,ss2,ss3,ss6,pBn64,pBn256
