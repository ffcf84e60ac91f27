#!/usr/bin/env bash
# Session 23, H200 call 4 (issue 17, decode): why the rank-16 64-token gate-up expand lost 10-26% in calls 2-3.
# main peels each group's first chunk off the chunk loop (the kernel body twice in the code); variant `select`
# (benchmarks/probe_s23/c4_select.patch) keeps one loop whose chunk 0 takes the rows gathered before it. Both
# against base (main with c2's patch reversed), same run, with the table re-tuned in call 3 as the user's table
# (benchmarks/results/h200/s23c3_table.json; base with the shipped one), after main's triton GPU tests.
# Usage (device tool): bash benchmarks/probe_s23_call4.sh
set -u
P=s23c4
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
cp benchmarks/results/h200/s23c3_table.json $R/tables/nvidia-h200.json
mkdir -p $W/base && cp -r lora $W/base/ && patch -s -R -p1 -d $W/base < benchmarks/probe_s23/c2_rows_at_fixed_places.patch \
    || { echo "patch -R failed"; exit 1; }
mkdir -p $W/select && cp -r lora $W/select/ && patch -s -p1 -d $W/select < benchmarks/probe_s23/c4_select.patch \
    || { echo "patch select failed"; exit 1; }
# main's GPU tests first (the peeled loop has not run them yet), with the shipped table
t0=$SECONDS
PYTHONPATH=. timeout 200 python3 -m pytest tests/gpu tests/lora -q -n 12 -rfE --tb=short -p no:cacheprovider \
    -k "not pallas" > $R/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR)|passed|failed" $R/${P}_gpu_tests.txt | cut -c1-200 | tail -8
export KERNELSTACK_TUNE_DIR=$R/tables
for v in base:shipped main:tuned select:tuned; do
    tab=${v#*:}; v=${v%:*}
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && if [ $tab = shipped ]; then unset KERNELSTACK_TUNE_DIR; fi
        PYTHONPATH=$d timeout 90 python3 -m lora compare --quick --backends triton --no-progress \
        --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode_${v}_$tab.json > $R/${P}_decode_${v}_$tab.txt 2>&1)
    echo "== decode $v $tab rc=$? $((SECONDS - t0)) s"; tail -n 1 $R/${P}_decode_${v}_$tab.txt | cut -c1-100
    [ $tab = tuned ] || continue
    (cd $d && PYTHONPATH=$d timeout 40 python3 -m lora compare --step --quick --backends triton --no-progress \
        --json $R/${P}_step_$v.json > $R/${P}_step_$v.txt 2>&1)
    echo "== step $v (tuned table) rc=$?"; grep -E "step-" $R/${P}_step_$v.txt | cut -c1-100 | tail -4
done
