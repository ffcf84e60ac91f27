#!/usr/bin/env bash
# Session 25, on the H100 (the H200 did not start), then on whichever card comes (the table is that card's): the
# decode buckets of the card's shipped table re-tuned with the
# session-24 candidates (the decode shrinks without the split-K finish, the qkv / gate-up pair whose expand sums
# the shrink's partials), starting from the shipped table (its plan is a candidate); the decode compare and the
# decode step before (shipped table) and after (the tuned table), same machine, same run.
# Usage (device tool): [BUDGET=seconds] bash benchmarks/probe_s25_tune.sh [PREFIX]   (PREFIX: s25h2 on the H100; BUDGET: the tuner's, 240)
# Session 25's s25h2 files came from its earlier form, three tuner runs (shrinks with 48 candidates, expands 64,
# pairs 12): `git show 56a3d37:benchmarks/probe_s25_tune.sh`. Since session 26 one run tunes all of them (64).
set -u
P=${1:-s25h2}
T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
nvidia-smi --query-gpu=name --format=csv,noheader; echo "table: $T"
[ -f lora/triton/tables/$T ] || { echo "no shipped table lora/triton/tables/$T"; exit 1; }
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
dec() {  # label: decode compare + step on the table in use
    local t0=$SECONDS
    PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton --no-progress \
        --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode_$1.json > $R/${P}_decode_$1.txt 2>&1
    echo "== decode $1 rc=$? $((SECONDS - t0)) s"; tail -n 1 $R/${P}_decode_$1.txt | cut -c1-160
    PYTHONPATH=. timeout 30 python3 -m lora compare --step --quick --backends triton --no-progress \
        --json $R/${P}_step_$1.json > $R/${P}_step_$1.txt 2>&1
    echo "== step $1 rc=$?"; grep -E "step-" $R/${P}_step_$1.txt | cut -c1-130 | tail -4
}
dec shipped
export KERNELSTACK_TUNE_DIR=$R/tables
cp lora/triton/tables/$T $R/tables/$T
tune() {  # label, ops, max candidates, budget
    local t0=$SECONDS
    PYTHONPATH=. timeout $(($4 + 40)) python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes decode \
        --ops $2 --max-candidates $3 --budget-s $4 --out $R/tables/ --no-progress > $R/${P}_tune_$1.txt 2>&1
    echo "== tune $1 rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $R/${P}_tune_$1.txt | cut -c1-200
}
# one run: the tuner adds the qkv / gate-up pairs (decode) and decides them last, on this run's shrink and expand
# plans (session 26: three runs tuned the pairs three times)
tune all shrink1,shrink2,shrink3,expand,expand_qkv,expand_gate_up 64 ${BUDGET:-240}
cp $R/tables/$T $R/${P}_table.json
dec tuned
