#!/usr/bin/env bash
# Session 27, issue 16 (pallas decode), one device call. The decode expand (one CTA per tile) read its block's slot
# list only after the block's adapter count had come back (the list's loads sat inside the branch on the count):
# two round trips to global memory before any tile was fetched. Main loads both together
# (benchmarks/probe_s27/c1_slot_list_with_count.patch). Base is main with that patch reversed, from a copy of lora/.
# Same run, base and main: the decode compare (triton and pallas, every decode case) and the decode step (both); then
# the decode expands at 6 and 8 adapter tiles in flight (Tuning.expand_stages; pallas:es6 / es8)
# against main's default 4 (benchmarks/decode_kernels.py). Every row is checked against the float64 oracle first.
# Before the call, lower the decode kernels of base and main into the cache the call carries (about 4 minutes):
#   B=$(mktemp -d); cp -r lora $B/ && patch -s -R -p1 -d $B < benchmarks/probe_s27/c1_slot_list_with_count.patch
#   for d in $B .; do JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=$d:benchmarks \
#     .venv-jax/bin/python benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
#     --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up; done
#   (and `--ops expand,expand_qkv,expand_gate_up,qkv,gate_up --tunings es6,es8` on main)
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s27_pallas_decode.sh [PREFIX]
set -u
P=${1:-s27p}
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
mkdir -p $W/base && cp -r lora $W/base/ && patch -s -R -p1 -d $W/base < benchmarks/probe_s27/c1_slot_list_with_count.patch \
    || { echo "patch -R failed"; exit 1; }
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout 120 python3 -m lora compare --quick --backends triton,pallas --no-progress \
        --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode_$v.json > $R/${P}_decode_$v.txt 2>&1)
    echo "== decode $v rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_decode_$v.txt | cut -c1-160
done
for v in base main; do
    d=$PWD; [ $v = main ] || d=$W/$v
    t0=$SECONDS
    (cd $d && PYTHONPATH=$d timeout 60 python3 -m lora compare --step --quick --backends triton,pallas --no-progress \
        --json $R/${P}_step_$v.json > $R/${P}_step_$v.txt 2>&1)
    echo "== step $v rc=$? $((SECONDS - t0)) s"; grep -E "step-" $R/${P}_step_$v.txt | cut -c1-160 | tail -8
done
python3 benchmarks/pallas_before_after.py $R/${P}_decode_base.json $R/${P}_decode_main.json > $R/${P}_before_after.md 2>&1
tail -n 40 $R/${P}_before_after.md
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 110 python3 benchmarks/decode_kernels.py --no-profile --budget-s 90 \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --backends pallas,pallas:es6,pallas:es8 \
    --json $R/${P}_es8.json > $R/${P}_es8.txt 2>&1
echo "== es8 rc=$? $((SECONDS - t0)) s"; tail -n 45 $R/${P}_es8.txt | cut -c1-150
