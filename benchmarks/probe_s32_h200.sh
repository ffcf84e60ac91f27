#!/usr/bin/env bash
# Session 32, issue 17, on an H200 only (exit 3 at once on another card): (1) the prefill / mixed shrink buckets
# re-tuned with the tuner's descriptor twins, compare before / after (probe_s32_tune_tma.sh); (2) with that
# table in place (in this call's tree only), the full triton record: every default case, both ranks (the decode
# step is not re-run: decode plans never load through descriptors); (3) the TMA tests (forced plans, a graph
# replay) and the tuned-table tests on the GPU; (4) the dense yardstick (cuBLAS, Triton pointers / descriptors).
# Usage (device tool): bash benchmarks/probe_s32_h200.sh [PREFIX]
set -u
P=${1:-s32h}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
grep -q H200 <<< "$GPU" || { echo "not an H200"; exit 3; }
bash benchmarks/probe_s32_tune_tma.sh $P
tar -xzf $OUT/$P.tar.gz -C /tmp r/${P}_table.json && cp /tmp/r/${P}_table.json lora/triton/tables/nvidia-h200.json \
    && echo "== the tuned table in place"
t0=$SECONDS
PYTHONPATH=. timeout 200 python3 -m lora compare --quick --backends triton --no-progress --json $OUT/${P}v_compare.json \
    > $OUT/${P}v_compare.txt 2>&1
echo "== compare rc=$? $((SECONDS - t0)) s"
PYTHONPATH=. python3 benchmarks/issue17_targets.py $OUT/${P}v_compare.json | tail -1
PYTHONPATH=. timeout 100 python3 -m pytest -q -p no:cacheprovider tests/lora/test_triton_planning.py tests/gpu/test_triton_tuned.py \
    "tests/gpu/test_graph_safety.py::test_tma_shrink_replays_new_inputs_written_in_place" 2>&1 | tail -3 | tee $OUT/${P}v_tests.txt
cd benchmarks && PYTHONPATH=.. timeout 100 python3 dense_reference.py --tokens 8192 --json $OUT/${P}_dense_reference.json 2>&1 \
    | grep -v Warn > $OUT/${P}_dense_reference.txt; grep -E "r64 shrink3" $OUT/${P}_dense_reference.txt | head -20
