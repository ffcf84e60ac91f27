#!/usr/bin/env bash
# Session 19, H200 call 3 (issue 16): the block shrink. Variant c3_nopairs.patch: the down projection's
# K-split block shrink runs a segment boundary's second adapter as an extra unit on an idle CTA instead of
# pairing it in one K loop (r64 mixed: 8412 tokens in the 16384 bucket, 124 blocks without rows), against
# main, pallas only, both ranks. Then Nsight Compute (full set, per-instruction samples) on main's block
# shrink kernel: r16 mixed QKV shrink, r64 mixed down-projection shrink (first kernel of the op only).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s19c3.tar.gz r; }
trap pack EXIT
mkdir -p $W/nopairs && cp -r lora $W/nopairs/ && patch -s -p1 -d $W/nopairs < benchmarks/probe_s19/c3_nopairs.patch
for v in main nopairs; do
    d=$PWD; [ $v = main ] || d=$W/$v
    echo "== $v"
    (cd $d && PYTHONPATH=$d timeout 120 python3 -m lora compare --quick --backends pallas --no-progress --ops shrink_down \
        --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' --json $R/s19c3_$v.json > $R/s19c3_$v.txt 2>&1)
    grep "\] llama" $R/s19c3_$v.txt | cut -c1-100
done
prof() {
    PYTHONPATH=. timeout 120 ncu --clock-control none --profile-from-start off -c 1 --set full --import-source no \
        -o $W/ncu_$1 python3 benchmarks/ncu_probe.py $2 $3 --backend pallas > $R/s19c3_ncu_$1.log 2>&1
    ncu -i $W/ncu_$1.ncu-rep --page details > $R/s19c3_ncu_$1.txt 2>&1
    ncu -i $W/ncu_$1.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $R/s19c3_src_$1.csv.gz
    grep -E "Duration|Issued Instructions  |Grid Size|Block Limit Shared" $R/s19c3_ncu_$1.txt | head -5
}
prof r16_shrink3 llama3-8b-r16-mixed shrink3
prof r64_shrink_down llama3-8b-r64-mixed shrink_down
