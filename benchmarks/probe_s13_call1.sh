#!/usr/bin/env bash
# Session 13, H200 call 1 (issue 17): Nsight Compute profiles of the prefill / mixed kernels furthest from the
# issue's 85% (r64 QKV shrink with the shipped plan and with the stream-K plan the tuner found, on prefill-8k and
# mixed; r64 expand; r64 gate-up shrink; r16 shrink and expand for contrast), and the triton GPU tests of the
# tree (a0d98fb's review mend had run on the CPU only).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
SK='ShrinkPlan(block_m=64, block_n=64, n_sub=3, block_k=64, split_k=1, num_warps=4, num_stages=3, stream_k=2)'
prof() {
    local name=$1; shift
    timeout 150 ncu --clock-control none --profile-from-start off -k 'regex:_shrink_kernel|_expand_kernel' \
        --set detailed python3 benchmarks/ncu_probe.py "$@" > $R/ncu_$name.txt 2>&1
    echo "$name rc=$?" >> $R/ncu_rc.txt
}
prof r64p_shrink3 llama3-8b-r64-prefill-8k shrink3
prof r64m_shrink3 llama3-8b-r64-mixed shrink3
prof r64p_shrink3_sk llama3-8b-r64-prefill-8k shrink3 --plan "$SK"
prof r64m_shrink3_sk llama3-8b-r64-mixed shrink3 --plan "$SK"
prof r64p_expand llama3-8b-r64-prefill-8k expand
prof r64p_shrink2 llama3-8b-r64-prefill-8k shrink2
prof r16p_shrink1 llama3-8b-r16-prefill-8k shrink1
prof r16p_expand llama3-8b-r16-prefill-8k expand
timeout 150 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k triton -rfE \
    -p no:cacheprovider > $R/gpu_tests.txt 2>&1
tail -3 $R/gpu_tests.txt; cat $R/ncu_rc.txt
