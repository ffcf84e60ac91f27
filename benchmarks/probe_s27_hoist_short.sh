#!/usr/bin/env bash
# Session 27, the short form of probe_s27_pallas_decode.sh for a call of under three minutes: the pallas decode
# expands only (expand, expand_qkv: one CTA per tile), base (c1_slot_list_with_count.patch reversed) against main,
# benchmarks/decode_kernels.py without the profiler (each row checked against the float64 oracle first).
# Usage (device tool, carry .pallas-cache, lowered ahead as probe_s27_pallas_decode.sh says): bash benchmarks/probe_s27_hoist_short.sh
set -u
P=${1:-s27s}
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
mkdir -p $W/base && cp -r lora $W/base/ && patch -s -R -p1 -d $W/base < benchmarks/probe_s27/c1_slot_list_with_count.patch \
    || { echo "patch -R failed"; exit 1; }
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    PYTHONPATH=$d:benchmarks timeout 70 python3 benchmarks/decode_kernels.py --no-profile --budget-s 55 \
        --ops expand,expand_qkv --backends pallas --json $R/${P}_$v.json > $R/${P}_$v.txt 2>&1
    echo "== $v rc=$? $((SECONDS - t0)) s"; grep -iE "us|fail" $R/${P}_$v.txt | tail -n 10 | cut -c1-150
done
