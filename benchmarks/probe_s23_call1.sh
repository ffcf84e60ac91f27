#!/usr/bin/env bash
# Session 23, H200 call 1 (issue 17, decode): each group's rows at a fixed place of row_order (group * stride),
# so a decode program loads its group's size, rank, scale, the slice bounds and its first chunk's rows in one
# round trip (before: slice bounds -> group start -> row list -> x). Triton only.
# main (the change) against base (main with benchmarks/probe_s23/c1_rows_at_fixed_places.patch reversed), same
# run: the decode compare and the decode step, then the triton GPU tests on main.
# Usage (device tool): bash benchmarks/probe_s23_call1.sh
set -u
P=s23c1
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
mkdir -p $W/base && cp -r lora $W/base/ && patch -s -R -p1 -d $W/base < benchmarks/probe_s23/c1_rows_at_fixed_places.patch \
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
t0=$SECONDS
PYTHONPATH=. timeout $((570 - SECONDS)) python3 -m pytest tests/gpu tests/lora -q -n 12 -rfE --tb=short -p no:cacheprovider \
    -k "not pallas" > $R/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR)|passed|failed" $R/${P}_gpu_tests.txt | cut -c1-200 | tail -8
