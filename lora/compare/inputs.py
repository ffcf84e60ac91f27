"""Poisoned inputs, the float64 oracle and the check, in torch on the device under test.

The same scheme as the contract suite (``tests/lora/contract.py``), written in torch so that the
Llama-sized cases are built and checked on the GPU: every element a backend must not read is NaN
(rows no adapter works on, the stale tails of the weight buffers beyond a slot's real rank, the
expand-input columns beyond ``stack*r``), and so are the ``base_output`` rows that must stay
untouched. A backend that reads poison produces NaN where the oracle has a number; one that writes
where it must not replaces NaN with a number. Either way the check fails.

The oracle evaluates the contract's formulas in float64 on the inputs *after* rounding to the
dtype under test, so the only error measured is the backend's own arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cases import Composition, ResolvedOp

__all__ = ["DTYPES", "TOLERANCE", "Check", "call_op", "check", "dtype_name", "make_inputs", "oracle", "set_bytes"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32", "fp16": "float16", "f16": "float16",
            "half": "float16", "bf16": "bfloat16"}
#: ||out - ref|| / ||ref|| allowed, by dtype (the contract suite's tolerances).
TOLERANCE = {"float32": 1e-3, "float16": 3e-3, "bfloat16": 1.5e-2}


def dtype_name(name: str) -> str:
    """Canonical dtype name from ``bf16`` / ``bfloat16`` / ``fp16`` / ...; ValueError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, float16, bfloat16 (or fp32, fp16, bf16)")
    return key


def _row_ranks(comp: Composition) -> list[int]:
    """Real rank each row is worked on with (0 for rows no adapter touches)."""
    ranks = [0] * comp.tokens
    for start, end, _, r, _ in comp.work():
        ranks[start:end] = [r] * (end - start)
    return ranks


def _slot_rows(comp: Composition, device) -> dict[int, torch.Tensor]:
    """Row indices of every used slot (segments sharing a slot gathered together)."""
    rows: dict[int, list[int]] = {}
    for start, end, w, _, _ in comp.work():
        rows.setdefault(w, []).extend(range(start, end))
    return {w: torch.tensor(idx, dtype=torch.long, device=device) for w, idx in rows.items()}


def make_inputs(op: ResolvedOp, comp: Composition, dtype: torch.dtype, device, seed: int) -> dict[str, torch.Tensor]:
    """Random, poisoned tensors for one call of ``op``, rounded to ``dtype`` on ``device``.

    Keys: ``x`` always; ``a`` (shrink, fused); ``b`` and ``base`` (expand, fused); ``offsets``
    (fused with 3 slices, i.e. QKV). Values are drawn in float32 from a generator seeded with ``seed``.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    nan = float("nan")
    f32 = dict(dtype=torch.float32, device=device)
    num_lora, max_r = comp.num_lora, comp.max_r
    slot_ranks = torch.tensor(comp.lora_ranks, dtype=torch.long, device=device)
    row_ranks = torch.tensor(_row_ranks(comp), dtype=torch.long, device=device)
    idle = row_ranks == 0
    out: dict[str, torch.Tensor] = {}

    if op.kind in ("shrink", "fused"):
        x = torch.randn(comp.tokens, op.k, generator=gen, **f32)
        x[idle] = nan
        a = torch.randn(num_lora, op.stack * max_r, op.k, generator=gen, **f32) / op.k**0.5
        row = torch.arange(op.stack * max_r, device=device)
        a[row[None, :] >= op.stack * slot_ranks[:, None]] = nan  # stale tails beyond stack*r
        out["x"], out["a"] = x, a
    else:  # expand: x as a shrink would leave it, NaN wherever expand must not read
        x = torch.randn(comp.tokens, op.stack * max_r, generator=gen, **f32)
        col = torch.arange(op.stack * max_r, device=device)
        x[col[None, :] >= op.stack * row_ranks[:, None]] = nan
        out["x"] = x
    if op.kind in ("expand", "fused"):
        b = torch.randn(num_lora, op.n, max_r, generator=gen, **f32) / max_r**0.5
        col = torch.arange(max_r, device=device)
        mask = col[None, :] >= slot_ranks[:, None]  # (num_lora, max_r): columns beyond the real rank
        b.masked_fill_(mask[:, None, :], nan)
        base = torch.randn(comp.tokens, op.n, generator=gen, **f32)
        base[idle] = nan
        out["b"], out["base"] = b, base
    out = {k: v.to(dtype) for k, v in out.items()}
    if (op.kind == "fused" and op.stack == 3) or (op.kind == "expand" and op.stack > 1):
        out["offsets"] = torch.tensor(op.offsets, dtype=torch.int32, device=device)
    return out


def set_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of one input set (what a rotation of sets must exceed the cache by)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def call_op(backend, op: ResolvedOp, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """Call the public op ``op`` stands for on the tensors ``t`` (``base`` is added into in place)."""
    if op.kind == "shrink":
        return backend.run_lora_a_sgemm(t["x"], t["a"], stack_num=op.stack)
    if op.kind == "expand" and op.stack == 1:
        return backend.run_lora_b_sgemm(t["x"], t["b"], base_output=t["base"])
    if op.kind == "expand":  # the primitive alone (no public op has 2-3 slices without the shrink)
        return backend.expand(t["x"], t["b"], t["offsets"], op.max_slice, t["base"])
    if op.stack == 3:
        return backend.run_qkv_lora(t["x"], t["a"], t["b"], t["offsets"], op.max_slice, base_output=t["base"])
    if op.stack == 2:
        return backend.run_gate_up_lora(t["x"], t["a"], t["b"], base_output=t["base"])
    raise ValueError(f"no public op for {op}")


# ---- the oracle ----------------------------------------------------------------------------------


def _shrink64(comp: Composition, rows: dict[int, torch.Tensor], x, a, stack: int) -> torch.Tensor:
    out = torch.zeros(x.shape[0], a.shape[1], dtype=torch.float64, device=x.device)
    for w, idx in rows.items():
        r = comp.lora_ranks[w]
        out[idx, : stack * r] = x[idx].double() @ a[w, : stack * r].double().T
    return out


def _expand64(comp: Composition, rows: dict[int, torch.Tensor], x, b, offsets, base) -> torch.Tensor:
    out = base.double() if base is not None else torch.zeros(x.shape[0], b.shape[1], dtype=torch.float64, device=x.device)
    for w, idx in rows.items():
        r, scaling = comp.lora_ranks[w], comp.scalings[w]
        for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            xj = x[idx, j * r : (j + 1) * r].double()
            out[idx, lo:hi] += scaling * (xj @ b[w, lo:hi, :r].double().T)
    return out


def oracle(op: ResolvedOp, comp: Composition, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The contract's result in float64, from the (rounded, poisoned) inputs ``t``; NaN where untouched."""
    rows = _slot_rows(comp, t["x"].device)
    if op.kind == "shrink":
        return _shrink64(comp, rows, t["x"], t["a"], op.stack)
    x = t["x"] if op.kind == "expand" else _shrink64(comp, rows, t["x"], t["a"], op.stack)
    # The float64 intermediate of a fused op keeps NaN out: only real-rank columns of worked rows are read.
    return _expand64(comp, rows, x, t["b"], list(op.offsets), t["base"])


# ---- the check -----------------------------------------------------------------------------------


@dataclass
class Check:
    rel_error: float
    ok: bool
    detail: str


def check(out, ref: torch.Tensor, dtype: str, *, expect_dtype: torch.dtype, base: torch.Tensor | None = None) -> Check:
    """Relative error over the finite part of ``ref``; NaN must sit exactly where ``ref`` has NaN."""
    tol = TOLERANCE[dtype]
    if not isinstance(out, torch.Tensor):
        return Check(float("inf"), False, f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        return Check(float("inf"), False, f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    if out.dtype != expect_dtype:
        return Check(float("inf"), False, f"output dtype {out.dtype}, expected the activation dtype {expect_dtype}")
    if base is not None and out.data_ptr() != base.data_ptr():
        return Check(float("inf"), False, "did not add into base_output in place and return it")
    out64 = out.detach().to(device=ref.device, dtype=torch.float64)
    ref_nan = torch.isnan(ref)
    bad = torch.isnan(out64) != ref_nan
    nbad = int(bad.sum())
    if nbad:
        first = torch.nonzero(bad)[0].tolist()
        wrote = not bool(ref_nan[tuple(first)])
        what = "NaN where a value belongs (poison read or element unwritten)" if wrote else "a value where the row must stay untouched (poison overwritten)"
        return Check(float("inf"), False, f"{nbad} elements differ in NaN-ness, first at {first}: {what}")
    if bool(torch.isinf(out64).any()):
        return Check(float("inf"), False, "inf in output")
    diff = torch.where(ref_nan, 0.0, out64 - ref).norm().item()
    scale = torch.where(ref_nan, 0.0, ref).norm().item()
    rel = diff / scale if scale > 0 else diff
    return Check(rel, rel <= tol, f"rel error {rel:.3g} vs tolerance {tol:g}")
