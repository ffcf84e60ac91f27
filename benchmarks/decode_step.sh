#!/usr/bin/env bash
# Issue 15 on one GPU (H200), bounded to about 3 minutes: the decode step as one CUDA graph, metadata
# derived once per step vs in every op call (same run), and the graph / stream safety tests.
#
#   OUT=/some/dir bash benchmarks/decode_step.sh        # PYTHON=... to pick the interpreter
#
# Writes under $OUT (default ./.out): decode_step.json (python -m lora compare --step; rewritten after
# each case, so a cut-off run keeps what it finished), decode_step.txt (its table), graph_safety.log
# (pytest of tests/gpu/test_graph_safety.py; tests/gpu/test_graphs.py runs in make gpu-test), and env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./.out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} XLA_PYTHON_CLIENT_PREALLOCATE=false
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; "$PY" -c \
  'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'; } \
  > "$OUT/env.txt" 2>&1
BACKENDS=${BACKENDS:-triton,pallas}

# 1. the graph-safety tests first (short; their pass/fail is part of the issue's "done")
timeout 60 "$PY" -m pytest -q -rfEs -p no:cacheprovider tests/gpu/test_graph_safety.py 2>&1 | tail -60 \
  > "$OUT/graph_safety.log"
echo "graph safety: $(tail -1 "$OUT/graph_safety.log")"

# 2. the decode step: 4 Llama-3-8B cases (r16/r64 x 64/256 tokens, 32 layers), each backend
timeout 115 "$PY" -m lora compare --step --quick --backends "$BACKENDS" --json "$OUT/decode_step.json" \
  2>&1 | tee "$OUT/decode_step.txt"
echo "exit status of compare --step: ${PIPESTATUS[0]} (124 = cut off by the time limit; JSON keeps finished cases)"
