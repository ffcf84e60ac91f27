"""The contract's poisoned inputs and float64 oracle (tests/lora/contract.py) in torch, on the GPU.

Same formulas and poison as the numpy version, so Llama-sized cases are built and checked in
seconds. Inputs are drawn in float32 on the device, rounded to the dtype under test, and the
oracle evaluates the rounded values in float64.
"""

from __future__ import annotations

import torch

from tests.lora import contract as C

TOLERANCE = C.TOLERANCE
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAN = float("nan")


class Inputs:
    def __init__(self, comp: C.Composition, dtype: torch.dtype, device, seed: int):
        self.comp, self.dtype, self.device = comp, dtype, torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.idle = torch.tensor(comp.idle_rows(), device=self.device)

    def _randn(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.gen, device=self.device, dtype=torch.float32) * scale

    def _done(self, t):
        return t.to(self.dtype)

    def activations(self, k):
        x = self._randn(self.comp.tokens, k)
        x[self.idle] = NAN
        return self._done(x)

    def shrink_weights(self, stack, k):
        c = self.comp
        a = self._randn(len(c.lora_ranks), stack * c.max_r, k, scale=k**-0.5)
        for w, r in enumerate(c.lora_ranks):
            a[w, stack * r :] = NAN
        return self._done(a)

    def expand_weights(self, n):
        c = self.comp
        b = self._randn(len(c.lora_ranks), n, c.max_r, scale=c.max_r**-0.5)
        for w, r in enumerate(c.lora_ranks):
            b[w, :, r:] = NAN
        return self._done(b)

    def expand_input(self, stack):
        c = self.comp
        x = torch.full((c.tokens, stack * c.max_r), NAN, device=self.device)
        for start, end, _, r, _ in c.segments():
            if r > 0 and end > start:
                x[start:end, : stack * r] = self._randn(end - start, stack * r)
        return self._done(x)

    def base_output(self, n):
        base = self._randn(self.comp.tokens, n)
        base[self.idle] = NAN
        return self._done(base)


def ref_shrink(comp, x, a, stack):
    x, a = x.double(), a.double()
    out = torch.zeros((x.shape[0], a.shape[1]), dtype=torch.float64, device=x.device)
    for start, end, w, r, _ in comp.segments():
        if r > 0 and end > start:
            out[start:end, : stack * r] = x[start:end] @ a[w, : stack * r].T
    return out


def ref_expand(comp, x, b, offsets, base):
    x, b = x.double(), b.double()
    out = torch.zeros((x.shape[0], b.shape[1]), dtype=torch.float64, device=x.device) if base is None else base.double().clone()
    for start, end, w, r, scaling in comp.segments():
        if r == 0 or end == start:
            continue
        for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            out[start:end, lo:hi] += scaling * (x[start:end, j * r : (j + 1) * r] @ b[w, lo:hi, :r].T)
    return out


def ref_stacked(comp, x, a, b, offsets, base):
    return ref_expand(comp, ref_shrink(comp, x, a, len(offsets) - 1), b, offsets, base)


def compare(out: torch.Tensor, ref: torch.Tensor, dtype_name: str) -> C.Check:
    out = out.double()
    if out.shape != ref.shape:
        return C.Check(float("inf"), False, f"shape {tuple(out.shape)} != {tuple(ref.shape)}")
    out_nan, ref_nan = torch.isnan(out), torch.isnan(ref)
    bad = out_nan != ref_nan
    if bool(bad.any()):
        first = torch.nonzero(bad)[0].tolist()
        return C.Check(float("inf"), False, f"{int(bad.sum())} elements differ in NaN-ness (poison read or written), first at {first}")
    if bool(torch.isinf(out).any()):
        return C.Check(float("inf"), False, "inf in output")
    keep = ~ref_nan
    diff = torch.linalg.vector_norm((out - ref)[keep]).item()
    scale = torch.linalg.vector_norm(ref[keep]).item()
    rel = diff / scale if scale > 0 else diff
    tol = TOLERANCE[dtype_name]
    return C.Check(rel, rel <= tol, f"rel error {rel:.3g} vs tolerance {tol:g}")


def batch_info(comp: C.Composition, device):
    from lora import LoRABatchInfo

    return LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=device)


# Llama-3-8B widths.
HIDDEN, Q, KV, INTER = 4096, 4096, 1024, 14336
OPS = ("shrink1", "shrink2", "shrink3", "shrink_down", "expand", "qkv", "gate_up")


def run_op(backend, op: str, comp: C.Composition, dtype_name: str, seed: int, device="cuda"):
    """Run ``op`` at Llama-3-8B widths on fresh poisoned inputs; return (Check, output)."""
    inp = Inputs(comp, DTYPES[dtype_name], device, seed)
    backend.set_batch_info(batch_info(comp, device))
    if op.startswith("shrink"):
        stack, k = (1, INTER) if op == "shrink_down" else (int(op[-1]), HIDDEN)
        x, a = inp.activations(k), inp.shrink_weights(stack, k)
        out = backend.run_lora_a_sgemm(x, a, stack_num=stack)
        ref = ref_shrink(comp, x, a, stack)
    elif op == "expand":
        x, b, base = inp.expand_input(1), inp.expand_weights(HIDDEN), inp.base_output(HIDDEN)
        ref = ref_expand(comp, x, b, [0, HIDDEN], base)
        out = backend.run_lora_b_sgemm(x, b, base_output=base)
        assert out.data_ptr() == base.data_ptr()
    elif op == "qkv":
        offsets = [0, Q, Q + KV, Q + 2 * KV]
        x, a, b, base = inp.activations(HIDDEN), inp.shrink_weights(3, HIDDEN), inp.expand_weights(offsets[-1]), inp.base_output(offsets[-1])
        ref = ref_stacked(comp, x, a, b, offsets, base)
        off_t = torch.tensor(offsets, dtype=torch.int32, device=device)
        out = backend.run_qkv_lora(x, a, b, off_t, Q, base_output=base)
        assert out.data_ptr() == base.data_ptr()
    elif op == "gate_up":
        offsets = [0, INTER, 2 * INTER]
        x, a, b, base = inp.activations(HIDDEN), inp.shrink_weights(2, HIDDEN), inp.expand_weights(2 * INTER), inp.base_output(2 * INTER)
        ref = ref_stacked(comp, x, a, b, offsets, base)
        out = backend.run_gate_up_lora(x, a, b, base_output=base)
        assert out.data_ptr() == base.data_ptr()
    else:
        raise ValueError(op)
    assert out.dtype == DTYPES[dtype_name]
    return compare(out, ref, dtype_name), out
