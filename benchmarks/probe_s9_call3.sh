#!/usr/bin/env bash
# Session 9, H200 call 3 (issue 17): same-run A/B of the PDL chain. s9old/ holds lora/ at 5efc49a (PDL only
# between a fused op's shrink and expand), copied beside the tree for this call only. The decode step three
# ways, twice, interleaved: chain (this tree), pair (s9old), none (LORA_TRITON_NO_PDL=1); then the decode
# compare of the pair-only tree (the chain's is call 2's).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
ROOT=$PWD
step() { (cd "$1" && PYTHONPATH=. timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step_$2_$3.json > $R/step_$2_$3.txt 2>&1); }
for i in 1 2; do
    step "$ROOT" chain $i
    step "$ROOT/s9old" pair $i
    LORA_TRITON_NO_PDL=1 step "$ROOT" none $i
done
(cd s9old && PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton --case 'llama3-8b-r*-decode-*' \
    --no-progress --json $R/compare_decode_pair.json > $R/compare_decode_pair.txt 2>&1)
PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton --case 'llama3-8b-r*-decode-*' \
    --no-progress --json $R/compare_decode_chain.json > $R/compare_decode_chain.txt 2>&1
