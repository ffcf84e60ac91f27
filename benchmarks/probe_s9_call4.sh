#!/usr/bin/env bash
# Session 9, H200 call 4 (issue 17): where the PDL chain loses on the rank-16 64-token step. Same-run decode steps
# of five trees: chain (this tree), pair (s9old: lora/ at 5efc49a), none (LORA_TRITON_NO_PDL=1), b (s9b: shrinks
# launched plainly, still triggering; expands chained) and c (s9c: single-op expands launched plainly; shrinks
# chained). s9old, s9b and s9c are copies beside the tree for this call only (the diffs are in the README).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
ROOT=$PWD
step() { (cd "$1" && PYTHONPATH=. timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step_$2.json > $R/step_$2.txt 2>&1); }
step "$ROOT" chain
step "$ROOT/s9b" b
step "$ROOT/s9c" c
step "$ROOT/s9old" pair
LORA_TRITON_NO_PDL=1 step "$ROOT" none
for v in b c; do
    (cd s9$v && PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton \
        --case 'llama3-8b-r*-decode-*' --no-progress --json $R/compare_decode_$v.json > $R/compare_decode_$v.txt 2>&1)
done
