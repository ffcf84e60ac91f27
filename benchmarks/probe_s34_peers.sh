#!/usr/bin/env bash
# Session 34, issue 17: our triton kernels beside the peers' newest releases (SGLang 0.5.23: its triton, csgmv (chunks of 16 and of 128) and
# triton_v2 backends; vLLM 0.33.0), same inputs and timing (benchmarks/peers/run.py: `lora compare` with the peers
# registered as backends), every default Llama-3-8B case, one run per rank, then ours against the best peer
# row by row (benchmarks/peers/report.py). Runs on whichever card comes.
# Needs the peers' sources carried: bash benchmarks/peers/fetch.sh; carry .peers/src and .peers/site.
# Usage (device tool): [BACKENDS=triton,peer-...] bash benchmarks/probe_s34_peers.sh [PREFIX] [SECONDS_PER_RANK]
set -u
P=${1:-s34p}
T=${2:-270}
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
for r in r16 r64; do
    t0=$SECONDS
    PYTHONPATH=. timeout "$T" python3 benchmarks/peers/run.py compare --quick --no-progress \
        --backends "${BACKENDS:-triton,peer-sglang,peer-sglang-csgmv,peer-sglang-csgmv128,peer-sglang-v2,peer-vllm}" --case "llama3-8b-$r-*" \
        --json "$OUT/${P}_$r.json" > "$OUT/${P}_$r.txt" 2>&1
    echo "== $r rc=$? $((SECONDS - t0)) s"
    grep -E "cannot run|Error|error" "$OUT/${P}_$r.txt" | head -5
    python3 benchmarks/peers/report.py "$OUT/${P}_$r.json" > "$OUT/${P}_$r.md" && tail -1 "$OUT/${P}_$r.md"
done
