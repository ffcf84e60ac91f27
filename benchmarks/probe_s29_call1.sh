#!/usr/bin/env bash
# Session 29, call 1 (main at the commit that adds this script): the whole GPU test suite, first run of the
# session-27 pallas edit (expand_kernel.one_tile loads the slot list with the adapter count) under
# tests/gpu/test_pallas_gpu.py and the contract / graph-safety tests. Then Nsight Compute (full set,
# per-instruction stall samples) on issue 16's worst decode rows: the pallas expand (one CTA per tile,
# adapters accumulated in one wgmma accumulator) at rank 16 and 64, 64 tokens. Then the same expand with its x
# operand passed to wgmma from registers (benchmarks/probe_s29/c2_xregs.patch: no store to shared memory and no
# fence per adapter; plain expands only, interpret mode cannot run it) against main, same run, every decode case,
# checked against the float64 oracle. Carry .pallas-cache.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s29c1.tar.gz r; }
trap pack EXIT
t0=$SECONDS
timeout 280 python3 -m pytest tests/gpu -q -n 12 -rfE --tb=short -p no:cacheprovider --durations=15 \
    > $R/s29c1_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR)|passed|failed" $R/s29c1_gpu_tests.txt | cut -c1-200 | tail -12
for r in 16 64; do
    c=llama3-8b-r$r-decode-64
    timeout 80 ncu --clock-control none --profile-from-start off --set full --import-source no \
        -o $W/ncu_r$r python3 benchmarks/ncu_probe.py $c expand --backend pallas > $R/s29c1_ncu_r$r.log 2>&1
    ncu -i $W/ncu_r$r.ncu-rep --page details > $R/s29c1_ncu_r$r.txt 2>&1
    ncu -i $W/ncu_r$r.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $R/s29c1_src_r$r.csv.gz
    tail -2 $R/s29c1_ncu_r$r.log; grep -E "Duration|Registers Per|Grid Size|Issue Slots Busy|No Eligible" $R/s29c1_ncu_r$r.txt | head -8
done
mkdir -p $W/xregs && cp -r lora $W/xregs/ && patch -s -p1 -d $W/xregs < benchmarks/probe_s29/c2_xregs.patch || exit 1
for v in main xregs; do
    d=$PWD; b=triton,pallas; [ $v = main ] || { d=$W/$v; b=pallas; }
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout 60 python3 -m lora compare --quick --backends $b --no-progress --ops expand \
        --case 'llama3-8b-r*-decode-*' --json $R/s29c1_xregs_$v.json > $R/s29c1_xregs_$v.txt 2>&1)
    echo "== $v rc=$? $((SECONDS - t0)) s"; grep "\] llama" $R/s29c1_xregs_$v.txt | cut -c1-120
done
