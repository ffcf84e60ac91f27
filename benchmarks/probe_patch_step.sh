#!/usr/bin/env bash
# A kernel trial kept as a patch, one device call, any card: the decode step (`python -m lora compare --step --quick
# --backends pallas`) of main against main with PATCH applied (a copy of the tree under /tmp), interleaved in the
# order of $VARIANTS (default "main trial main trial"; triton beside the first), then per $STEPS:
#   tests   the pallas GPU suite, graph safety and the PDL chain on the trial tree (about 160 s);
#   ops     benchmarks/decode_kernels.py, pallas, in both trees (each op graph-batched; $OPS_S seconds each).
# Before the call, lower both trees' decode kernels on the CPU (about 2.5 minutes on two cores, 11 MB each; the
# cache keys hold the kernels' source, so each tree needs its own):
#   bash benchmarks/probe_patch_step.sh --lower PATCH        # -> .out/cmain, .out/ctrial
# Usage (device tool, carry .out/cmain .out/ctrial): [STEPS="step ops tests"] bash benchmarks/probe_patch_step.sh PATCH [PREFIX]
set -u
if [ "${1:-}" = --lower ]; then
    PATCH=$(realpath "$2"); MAIN=$PWD
    rm -rf /tmp/trial && mkdir -p /tmp/trial && cp -r lora benchmarks pyproject.toml /tmp/trial/
    (cd /tmp/trial && patch -s -p1 < "$PATCH") || exit 1
    for t in main trial; do
        rm -rf .out/c$t && mkdir -p .out/c$t
        (cd $([ $t = main ] && echo $MAIN || echo /tmp/trial) && JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/c$t \
            PYTHONPATH=.:benchmarks $MAIN/.venv-jax/bin/python benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
            --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up) | tail -n 1 &
    done
    wait; du -sh .out/cmain .out/ctrial; exit 0
fi
PATCH=$1
P=${2:-trial}
DEFAULT_STEPS="step"
source benchmarks/probe_preamble.sh
MAIN=$PWD
rm -rf /tmp/trial && mkdir -p /tmp/trial && cp -r lora benchmarks tests pyproject.toml /tmp/trial/
(cd /tmp/trial && patch -s -p1 < $MAIN/$PATCH) && echo "trial tree: $PATCH applied" || exit 1
in_tree() {  # in_tree main|trial CMD...: CMD in that tree with its lowered kernels
    local t=$1; shift
    (export KERNELSTACK_PALLAS_CACHE_DIR=$MAIN/.out/c$t PYTHONPATH=.:benchmarks
     if [ $t = main ]; then cd $MAIN; else cd /tmp/trial; fi
     "$@")
}
if want step; then
k=0
for v in ${VARIANTS:-main trial main trial}; do
k=$((k + 1)); t0=$SECONDS
in_tree $v timeout 120 python3 -m lora compare --step --quick \
    --backends $([ $k = 1 ] && echo triton,)pallas --no-progress --json $OUT/${P}_step${k}_$v.json > $OUT/${P}_step${k}_$v.txt 2>&1
echo "== step $k $v rc=$? $((SECONDS - t0)) s"; grep -E "graph_once|Error" $OUT/${P}_step${k}_$v.txt | cut -c1-110
done
fi
if want ops; then
for v in main trial; do
t0=$SECONDS
in_tree $v timeout ${OPS_S:-70} python3 benchmarks/decode_kernels.py --no-profile \
    --backends pallas --budget-s $((${OPS_S:-70} - 20)) --json $OUT/${P}_ops_$v.json > $OUT/${P}_ops_$v.txt 2>&1
echo "== ops $v rc=$? $((SECONDS - t0)) s"; tail -n 36 $OUT/${P}_ops_$v.txt | cut -c1-150
done
fi
if want tests; then
t0=$SECONDS
in_tree trial timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_pallas_pdl.py \
    tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests (trial) rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|error|FAILED" $OUT/${P}_gpu_tests.txt | tail -n 8 | cut -c1-300
fi
