#!/usr/bin/env bash
# Session 30: the trial was dropped after this call (a7011bc); its code is benchmarks/probe_s30/wgs2.patch.
# Issue 16, the next H200 call (written in session 29): Tuning(expand_wgs=2) on a GPU for the first time. Session 29's
# profile (benchmarks/results/h200, s29c1) found the pallas decode expand latency-bound on one warp's instruction
# stream; the trial runs a tile's adapters on two warpgroups with every B tile fetched at once.
#   1. its GPU tests (Llama-3-8B width, ranks 16 / 64, 64 / 256 tokens, three dtypes, 20 bitwise repeats);
#   2. benchmarks/decode_kernels.py: the plain decode expands, triton / pallas / pallas:wgs2, every decode case
#      (each row checked against the float64 oracle first);
#   3. Nsight Compute (full set, per-instruction samples) on pallas:wgs2's r16 and r64 64-token expands, to read
#      beside s29c1_src_r{16,64}.csv.gz with benchmarks/ncu_sass_hot.py.
# Ship it as the decode default (expand_config) only if step 2 is faster on every plain-expand row.
# Before the call, lower the kernels into the cache the call carries (the sources changed in session 29, so
# earlier caches miss):
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' --ops expand --tunings wgs2
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s30_wgs.sh [PREFIX]
set -u
P=${1:-s30w}
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
t0=$SECONDS
timeout 200 python3 -m pytest tests/gpu/test_pallas_gpu.py -q -n 8 -rfE --tb=short -p no:cacheprovider \
    -k "two_warpgroup or contract_real_widths and expand" > $R/${P}_gpu_tests.txt 2>&1
rc=$?
echo "== gpu tests rc=$rc $((SECONDS - t0)) s"; grep -E "^(FAILED|ERROR)|passed|failed" $R/${P}_gpu_tests.txt | cut -c1-200 | tail -12
[ $rc = 0 ] || exit 1
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 150 python3 benchmarks/decode_kernels.py --no-profile --budget-s 130 --ops expand \
    --backends triton,pallas,pallas:wgs2 --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; grep -E "expand " $R/${P}_decode.txt | cut -c1-120
for r in 16 64; do
    timeout 80 ncu --clock-control none --profile-from-start off --set full --import-source no -o $W/ncu_r$r \
        python3 benchmarks/ncu_probe.py llama3-8b-r$r-decode-64 expand --backend pallas --tuning wgs2 \
        > $R/${P}_ncu_r$r.log 2>&1
    ncu -i $W/ncu_r$r.ncu-rep --page details > $R/${P}_ncu_r$r.txt 2>&1
    ncu -i $W/ncu_r$r.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $R/${P}_src_r$r.csv.gz
    tail -2 $R/${P}_ncu_r$r.log; grep -E "Duration|Registers Per|Grid Size|Block Size|Issue Slots Busy" $R/${P}_ncu_r$r.txt | head -8
done
