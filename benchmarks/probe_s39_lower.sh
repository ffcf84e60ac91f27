#!/usr/bin/env bash
# Session 39, on this (CPU) machine: lower the Llama-3-8B decode kernels of main and of each trial patch of
# benchmarks/probe_s39/ into one .pallas-cache (a fresh one), for benchmarks/probe_s39_trigger.sh to carry. About a
# minute a variant on 2 cores. Leaves the tree as it found it (each patch is reverted after its lowering).
# Usage: [PATCH_DIR=benchmarks/probe_s40] bash benchmarks/probe_s39_lower.sh [VARIANTS] (default "main notrigger all";
# each variant but main is PATCH_DIR/VARIANT.patch, PATCH_DIR benchmarks/probe_s39 unless set)
set -eu
cd "$(dirname "$0")/.."
rm -rf .pallas-cache
lower() {
    JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
        benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
        --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up | tail -n 1
}
for v in ${1:-main notrigger all}; do
    if [ $v = main ]; then lower; continue; fi
    git apply ${PATCH_DIR:-benchmarks/probe_s39}/$v.patch
    trap "git apply -R ${PATCH_DIR:-benchmarks/probe_s39}/$v.patch" EXIT
    lower
    git apply -R ${PATCH_DIR:-benchmarks/probe_s39}/$v.patch
    trap - EXIT
done
echo "$(ls .pallas-cache | wc -l) files, $(du -sh .pallas-cache | cut -f1)"
