"""CUDA-graph capture once, replay with new metadata copied into the same tensors (decode and prefill).

Each op is captured with one composition, then replayed for others of the same shapes (tokens,
segments, slots) but different lengths, slots, ranks and scalings; fresh poisoned inputs are copied
into the captured tensors, ``set_batch_info`` re-derives the backend's metadata into the same buffers
before each replay, and the output is checked against the oracle.
"""

from __future__ import annotations

import pytest
import torch

from lora import testing as C
from lora.compare.cases import LLAMA3_8B, OPS
from lora.testing import DTYPES, batch_info, compare

from .conftest import backend_or_skip, gpu_backends, needs_cuda

HIDDEN, Q, KV, INTER = LLAMA3_8B.hidden, LLAMA3_8B.q, LLAMA3_8B.kv, LLAMA3_8B.inter

pytestmark = needs_cuda
DEV = "cuda"


def _compositions(kind: str, rng) -> list[C.Composition]:
    if kind == "decode":  # 64 segments, 8 slots; later ones with empty and multi-token segments
        out = []
        for i in range(3):
            lens = [1] * 64
            if i:
                lens[int(rng.integers(64))] = 0
                lens[int(rng.integers(64))] = 0
            slots = [int(v) for v in rng.integers(0, 8, 64)]
            ranks = [16] * 8 if i == 0 else [int(v) for v in rng.choice([0, 5, 16], 8)]
            out.append(C.Composition(lens, slots, ranks, [float(v) for v in rng.uniform(0.25, 2, 8)], 16, 64))
        return out
    out = []  # prefill: 1024 rows, 6 segments of varying lengths
    for i in range(3):
        cuts = sorted(int(v) for v in rng.choice(range(1, 1000), 5, replace=False))
        lens = [b - a for a, b in zip([0, *cuts], [*cuts, 1000])]
        slots = [int(v) for v in rng.integers(0, 4, 6)]
        ranks = [64, 64, 64, 64] if i == 0 else [int(v) for v in rng.choice([0, 24, 64], 4)]
        out.append(C.Composition(lens, slots, ranks, [float(v) for v in rng.uniform(0.25, 2, 4)], 64, 1024))
    return out


def _fresh(op, comp, dtype, seed):
    """Poisoned inputs of ``op`` at Llama-3-8B widths: x, a (shrink, fused), b and base (expand, fused)."""
    t = C.make_inputs(OPS[op].resolve(LLAMA3_8B), comp, dtype, DEV, seed)
    t.pop("offsets", None)
    return t


def _ref(op, comp, t):
    return C.oracle(OPS[op].resolve(LLAMA3_8B), comp, t)


@pytest.mark.parametrize("kind", ["decode", "prefill"])
@pytest.mark.parametrize("op", ["qkv", "gate_up", "shrink3", "expand"])
@pytest.mark.parametrize("name", gpu_backends())
def test_capture_once_replay_with_new_metadata(name, op, kind, rng):
    dtype = DTYPES["bfloat16"]
    comps = _compositions(kind, rng)
    bi = batch_info(comps[0], DEV)
    backend = backend_or_skip(name, bi)
    static = _fresh(op, comps[0], dtype, 0)
    offsets = torch.tensor([0, Q, Q + KV, Q + 2 * KV], dtype=torch.int32, device=DEV)

    def call():
        if op == "qkv":
            return backend.run_qkv_lora(static["x"], static["a"], static["b"], offsets, Q, base_output=static["base"])
        if op == "gate_up":
            return backend.run_gate_up_lora(static["x"], static["a"], static["b"], base_output=static["base"])
        if op == "shrink3":
            return backend.run_lora_a_sgemm(static["x"], static["a"], stack_num=3)
        return backend.run_lora_b_sgemm(static["x"], static["b"], base_output=static["base"])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()  # compile and allocate outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()

    for i, comp in enumerate(comps):
        fresh_bi = batch_info(comp, DEV)
        for field in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
            getattr(bi, field).copy_(getattr(fresh_bi, field))
        backend.set_batch_info(bi)  # re-derive into the same buffers before the replay (lora.backend)
        fresh = _fresh(op, comp, dtype, 100 + i)
        for key, value in fresh.items():
            static[key].copy_(value)
        ref = _ref(op, comp, fresh)
        graph.replay()
        torch.cuda.synchronize()
        check = compare(out, ref, "bfloat16", comp=comp, op=OPS[op].resolve(LLAMA3_8B))
        assert check.ok, f"replay {i} ({comp}): {check.detail} {check.problems}"
