#!/usr/bin/env bash
# Session 24 had no device (none was lent); this call is written for the next session that has one (H200).
# Issue 17, decode. The decode shrinks are about 2x issue 17's bound; session 15 measured the split-K finish
# (partial stored, ticket, the last program reading partials back) at ~1 us of it. `python -m lora tune` now
# has, after its nearest candidates, decode shrink plans without that finish (one program per adapter group and
# column block streaming all of K through an 8-12 stage pipeline; two splits, deep) and plans of one K step per
# program (32 splits). This call times every candidate of the decode shrink buckets of K = 4096 (12 buckets;
# the 14336-deep down projection, least likely to gain, is left for later), and every candidate of
# the decode expand buckets (r64-64 expand is 0.01 us over the bound, r16-256 expand 0.09 us; the gate-up
# expand, at 40-62% of copy the most bandwidth-bound decode op, lost 10% at r16-64 in session 23), starting from
# the shipped table (its plan is a candidate: nothing gets slower), then the decode compare and the decode step
# with the table written.
# Usage (device tool): bash benchmarks/probe_s24_call1.sh
# Then: the table is $OUT/s24c1.tar.gz:r/tables/nvidia-h200.json (keep it as benchmarks/results/h200/s24c1_table.json).
set -u
P=s24c1
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export KERNELSTACK_TUNE_DIR=$R/tables
cp lora/triton/tables/nvidia-h200.json $R/tables/nvidia-h200.json
t0=$SECONDS
PYTHONPATH=. timeout 260 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes decode \
    --ops shrink1,shrink2,shrink3 --max-candidates 48 --budget-s 215 --out $R/tables/ --no-progress \
    > $R/${P}_tune_shrink.txt 2>&1
echo "== tune shrinks rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $R/${P}_tune_shrink.txt | cut -c1-220
t0=$SECONDS
PYTHONPATH=. timeout 190 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes decode \
    --ops expand,expand_qkv,expand_gate_up --max-candidates 64 --budget-s 150 --out $R/tables/ --no-progress \
    > $R/${P}_tune_expand.txt 2>&1
echo "== tune expands rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $R/${P}_tune_expand.txt | cut -c1-220
cp $R/tables/nvidia-h200.json $R/${P}_table.json
t0=$SECONDS
PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton --no-progress \
    --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_decode.txt | cut -c1-160
PYTHONPATH=. python3 benchmarks/issue17_targets.py $R/${P}_decode.json --before benchmarks/results/h200/s23c4_decode_main_tuned.json \
    > $R/${P}_issue17_decode.md 2>&1; tail -n 1 $R/${P}_issue17_decode.md
t0=$SECONDS
PYTHONPATH=. timeout 30 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/${P}_step.json > $R/${P}_step.txt 2>&1
echo "== step rc=$? $((SECONDS - t0)) s"; grep -E "step-" $R/${P}_step.txt | cut -c1-130 | tail -4
