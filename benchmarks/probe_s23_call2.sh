#!/usr/bin/env bash
# Session 23, H200 call 2 (issue 17, decode): each group's rows at a fixed place of row_order (group * stride),
# so a decode program loads its group's size, rank, scale, the slice bounds and its first chunk's rows in one
# round trip (before: slice bounds -> group start -> row list -> x). Triton only.
# main (the change) against base (main with benchmarks/probe_s23/c2_rows_at_fixed_places.patch reversed), same
# run: the decode compare and the decode step, then the triton GPU tests on main.
# Call 1 carried each group's first chunk of rows into the chunk loop: decode shrinks 1.1-3x slower. Here the
# first chunk is peeled off the loop. The GPU tests are replaced by the prefill / mixed compare (the prefill
# layout reads the rows at the same fixed places).
# Usage (device tool): bash benchmarks/probe_s23_call2.sh
set -u
P=s23c2
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
mkdir -p $W/base && cp -r lora $W/base/ && patch -s -R -p1 -d $W/base < benchmarks/probe_s23/c2_rows_at_fixed_places.patch \
    || { echo "patch -R failed"; exit 1; }
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout 130 python3 -m lora compare --quick --backends triton --no-progress \
        --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode_$v.json > $R/${P}_decode_$v.txt 2>&1)
    echo "== decode $v rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_decode_$v.txt | cut -c1-160
done
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout 80 python3 -m lora compare --step --quick --backends triton --no-progress \
        --json $R/${P}_step_$v.json > $R/${P}_step_$v.txt 2>&1)
    echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "step-" $R/${P}_step_$v.txt | cut -c1-160 | tail -8
done
PT=$(( (560 - SECONDS) / 2 ))
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout $PT python3 -m lora compare --quick --backends triton --no-progress \
        --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' --json $R/${P}_prefill_$v.json > $R/${P}_prefill_$v.txt 2>&1)
    echo "== prefill $v rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_prefill_$v.txt | cut -c1-160
done
