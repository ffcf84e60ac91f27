#!/usr/bin/env bash
# Session 19, H200 call 1 (issue 16, diagnosis): what a segment-boundary tile of the persistent expand costs,
# part by part. Session 18 call 6 found each tile of a block where two adapters meet costs about one more
# whole step. Variants of the kernel's boundary loop (patches in benchmarks/probe_s19/c1_*.patch; their
# results are wrong on purpose except xdirect's), timed on the r64 mixed case: skip (the second adapter
# not added at all: the floor), fetch (its x window and B tile fetched, nothing else), move (plus the B
# mask and the x window moved into the operand buffer), prod (plus the wgmma, no merge), xdirect (the full
# step, the x window fetched straight into the operand buffer as a tiled copy where the slice starts on a
# tile). (Run from each variant's directory: \`python -m\` puts the working directory first on sys.path.)
# Then Nsight Compute (full set, per-instruction stall samples) on the shipped r64 QKV expand,
# mixed and prefill-8k.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s19c1.tar.gz r; }
trap pack EXIT
cmp() {  # name, PYTHONPATH, backends, cases...
    local name=$1 path=$2 backends=$3; shift 3
    (cd $path && PYTHONPATH=$path timeout 150 python3 -m lora compare --quick --backends $backends --no-progress \
        --ops expand,expand_qkv "$@" --json $R/s19c1_$name.json > $R/s19c1_$name.txt 2>&1)
    grep "\] llama" $R/s19c1_$name.txt | cut -c1-110
}
cmp main $PWD triton,pallas --case llama3-8b-r64-mixed --case llama3-8b-r64-prefill-8k
for v in skip fetch move prod xdirect; do
    mkdir -p $W/$v && cp -r lora $W/$v/ && patch -s -p1 -d $W/$v < benchmarks/probe_s19/c1_$v.patch
done
for v in skip fetch move prod; do echo "== $v"; cmp $v $W/$v pallas --case llama3-8b-r64-mixed; done
echo "== xdirect"; cmp xdirect $W/xdirect pallas --case llama3-8b-r64-mixed --case llama3-8b-r64-prefill-8k
for c in mixed prefill-8k; do
    PYTHONPATH=. timeout 200 ncu --clock-control none --profile-from-start off --set full --import-source no \
        -o $W/ncu_$c python3 benchmarks/ncu_probe.py llama3-8b-r64-$c expand_qkv --backend pallas \
        > $R/s19c1_ncu_$c.log 2>&1
    ncu -i $W/ncu_$c.ncu-rep --page details > $R/s19c1_ncu_$c.txt 2>&1
    ncu -i $W/ncu_$c.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $R/s19c1_src_$c.csv.gz
    tail -3 $R/s19c1_ncu_$c.log; grep -E "^  [a-z_]|Duration|Registers Per|Achieved Occ|DRAM Through" $R/s19c1_ncu_$c.txt | head -12
done
