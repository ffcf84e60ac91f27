"""Offsets past 2**31 elements: an output of more than 2**31 elements and an input of more.

Row x stride overflows 32-bit arithmetic here (a known crash in a peer at ~39k tokens x wide rows).
Only sampled rows are checked against a float64 reference (first, last, around segment edges), and
the rows of a rank-0 segment must come back bit-identical.
"""

from __future__ import annotations

import pytest
import torch

from lora import LoRABatchInfo

from .conftest import backend_or_skip, gpu_backends, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


def _rows_check(out, ref_rows, rows, tol=1.5e-2):
    got = out[rows].double()
    rel = (torch.linalg.vector_norm(got - ref_rows) / torch.linalg.vector_norm(ref_rows)).item()
    assert rel <= tol, f"rows {rows[:3].tolist()}..: rel error {rel:.3g}"


@pytest.mark.parametrize("name", gpu_backends())
def test_gate_up_output_past_2_pow_31_elements(name):
    s, k, n, r = 76_000, 4096, 14336, 16
    assert s * 2 * n > 2**31
    lens, slots = [38_000, 10, 37_990], [0, 2, 1]
    bi = LoRABatchInfo.from_segments(lens, slots, [r, r, 0], [0.5, 2.0, 1.0], device=DEV)
    backend = backend_or_skip(name, bi)
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(s, k, device=DEV, generator=g).to(torch.bfloat16)
    a = (torch.randn(3, 2 * r, k, device=DEV, generator=g) / k**0.5).to(torch.bfloat16)
    b = (torch.randn(3, 2 * n, r, device=DEV, generator=g) / r**0.5).to(torch.bfloat16)
    base = torch.randn(s, 2 * n, device=DEV, generator=g).to(torch.bfloat16)
    rows = torch.cat([torch.arange(0, 16), torch.arange(37_990, 38_020), torch.arange(s - 16, s)]).to(DEV)
    before = base[rows].clone()
    out = backend.run_gate_up_lora(x, a, b, base_output=base)
    torch.cuda.synchronize()
    assert out.data_ptr() == base.data_ptr()
    slot_of = torch.tensor([0] * 16 + [0] * 10 + [2] * 10 + [1] * 10 + [1] * 16, device=DEV)
    scal = torch.tensor([0.5, 2.0, 1.0], device=DEV, dtype=torch.float64)
    ref = before.double().clone()
    for w in (0, 1):
        sel = slot_of == w
        xa = (x[rows[sel]].double() @ a[w].double().T).to(torch.bfloat16).double()  # shrink output is rounded
        gate = xa[:, :r] @ b[w, :n].double().T
        up = xa[:, r:] @ b[w, n:].double().T
        ref[sel] += scal[w] * torch.cat([gate, up], dim=1)
    work = slot_of != 2
    _rows_check(out, ref[work], rows[work])
    assert torch.equal(out[rows[~work]], before[~work]), "rows of a rank-0 segment must stay untouched"


@pytest.mark.parametrize("name", gpu_backends())
def test_down_shrink_input_past_2_pow_31_elements(name):
    s, k, r = 150_000, 14336, 16
    assert s * k > 2**31
    bi = LoRABatchInfo.from_segments([70_000, 79_990], [1, 0], [r, r], [1.0, 1.0], device=DEV)
    backend = backend_or_skip(name, bi)
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(s, k, device=DEV, generator=g).to(torch.bfloat16)
    a = (torch.randn(2, r, k, device=DEV, generator=g) / k**0.5).to(torch.bfloat16)
    out = backend.run_lora_a_sgemm(x, a, stack_num=1)
    torch.cuda.synchronize()
    rows = torch.cat([torch.arange(0, 8), torch.arange(69_995, 70_005), torch.arange(149_980, 149_990)]).to(DEV)
    slot = torch.tensor([1] * 8 + [1] * 5 + [0] * 5 + [0] * 10, device=DEV)
    ref = torch.stack([x[i].double() @ a[int(w)].double().T for i, w in zip(rows.tolist(), slot.tolist())])
    _rows_check(out, ref, rows)
    tail = out[149_990:]
    assert tail.shape[0] == 10 and not tail.any(), "rows after the last segment must be zeros"
