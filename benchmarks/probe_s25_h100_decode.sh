#!/usr/bin/env bash
# Session 25, on the H100, after its decode table was re-tuned (probe_s25_h100_tune.sh): issue 16's decode ratios
# (pallas against triton, every decode case, same run), then the pallas down-projection shrink's two-way K split
# (ks2bk128s4, the mixed batch's best on this card) on prefill-8k against the defaults.
# Usage (device tool): bash benchmarks/probe_s25_h100_decode.sh
set -u
P=s25h4
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false
t0=$SECONDS
PYTHONPATH=. timeout 170 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 1 $R/${P}_decode.txt | cut -c1-160
t0=$SECONDS
PYTHONPATH=. timeout 130 python3 benchmarks/pallas_sweep.py --budget-s 100 \
    --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k --tunings default,ks2bk128s4 \
    --json $R/${P}_prefill.json > $R/${P}_prefill.txt 2>&1
echo "== prefill sweep rc=$? $((SECONDS - t0)) s"; sed -n '/best pallas/,$p' $R/${P}_prefill.txt | cut -c1-170
