#!/usr/bin/env bash
# Session 24 had no device; written for the next session that has one (H200), after probe_s24_call1.sh.
# Issue 17, decode. (1) benchmarks/launch_floor.py with its one-round-trip reads (one tl.load a program; the
# same plus the split-K finish; a dependent index load first, as a decode kernel's metadata; a TMA block):
# whether a Triton read of a decode op's bytes fits issue 17's bound at all (the old `read` rows streamed in
# 2 KB steps, a round trip each). (2) the decode shrinks' plan landscape on two rows (every plan's time, where
# the tuner keeps only the best): the table's plan against no split-K and 32 splits. (3) the decode qkv /
# gate-up pair whose expand sums the shrink's partials against the plain pair. (4) the decode qkv /
# gate-up pairs re-tuned (one launch, two, two with partials) on call 1's table, when it is at
# benchmarks/results/h200/s24c1_table.json; then the decode compare and step on the result.
# Usage (device tool): bash benchmarks/probe_s24_call2.sh
set -u
P=s24c2
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 benchmarks/launch_floor.py --json $R/${P}_launch_floor.json > $R/${P}_launch_floor.txt 2>&1
echo "== launch floor rc=$? $((SECONDS - t0)) s"; cat $R/${P}_launch_floor.txt | cut -c1-150
t0=$SECONDS
PLANS=(--plan table)
for p in "1, 256, 1, 4, 8" "1, 256, 1, 8, 8" "1, 128, 1, 4, 12" "1, 512, 1, 4, 6" "1, 256, 2, 4, 8" "1, 128, 32, 4, 2"; do
    IFS=', ' read -r nsub bk split warps stages <<< "$p"
    PLANS+=(--plan "ShrinkPlan(16, 16, $nsub, $bk, $split, $warps, $stages, True)")
done
PYTHONPATH=. timeout 100 python3 benchmarks/plan_probe.py --cases llama3-8b-r16-decode-64,llama3-8b-r64-decode-64 \
    --op shrink1,shrink3 "${PLANS[@]}" --json $R/${P}_shrink_plans.json > $R/${P}_shrink_plans.txt 2>&1
echo "== shrink plans rc=$? $((SECONDS - t0)) s"; cut -c1-160 $R/${P}_shrink_plans.txt
# (3) the decode qkv / gate-up as two launches whose expand sums the shrink's split-K partials (FusedPlan.partials,
# session 24: no ticket in the shrink; not yet run on a GPU), split 2, 4 and 8 ways, against the plain pair
t0=$SECONDS
PYTHONPATH=. timeout 100 python3 benchmarks/plan_probe.py --cases llama3-8b-r16-decode-64,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64,llama3-8b-r64-decode-256 \
    --op qkv,gate_up --checks 3 --plan table --plan 'FusedPlan(16, 16, 1, 32, 1, fuse=False)' \
    --plan 'FusedPlan(16, 16, 2, 32, 1, fuse=False, partials=True)' \
    --plan 'FusedPlan(16, 16, 4, 32, 1, fuse=False, partials=True)' \
    --plan 'FusedPlan(16, 16, 8, 32, 1, fuse=False, partials=True)' \
    --plan 'FusedPlan(16, 16, 4, 32, 1, fuse=False, pdl=False, partials=True)' \
    --json $R/${P}_partials.json > $R/${P}_partials.txt 2>&1
echo "== partials pair rc=$? $((SECONDS - t0)) s"; cut -c1-160 $R/${P}_partials.txt
[ -f benchmarks/results/h200/s24c1_table.json ] || { echo "no s24c1_table.json: fused re-tune skipped"; exit 0; }
export KERNELSTACK_TUNE_DIR=$R/tables
cp benchmarks/results/h200/s24c1_table.json $R/tables/nvidia-h200.json
t0=$SECONDS
PYTHONPATH=. timeout 160 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes decode \
    --ops qkv,gate_up --budget-s 120 --out $R/tables/ --no-progress > $R/${P}_tune_fused.txt 2>&1
echo "== tune fused rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $R/${P}_tune_fused.txt | cut -c1-220
cp $R/tables/nvidia-h200.json $R/${P}_table.json
t0=$SECONDS
PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton --no-progress \
    --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_decode.txt | cut -c1-160
PYTHONPATH=. timeout 30 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/${P}_step.json > $R/${P}_step.txt 2>&1
echo "== step rc=$?"; grep -E "step-" $R/${P}_step.txt | cut -c1-130 | tail -4
