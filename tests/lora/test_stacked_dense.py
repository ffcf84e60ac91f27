"""benchmarks/stacked_dense.py: the decode expand written as dense GEMMs over the stacked adapters (a GPU
yardstick) computes the expand: checked on the CPU against the float64 oracle on poisoned inputs."""

from __future__ import annotations

import pytest
import torch

from lora import testing as T

@pytest.mark.parametrize("slices", [1, 2, 3])
def test_the_stacked_gemms_are_the_expand(rng, slices, benchmark_script):
    mod = benchmark_script("stacked_dense")
    offsets = {1: (0, 40), 2: (0, 24, 48), 3: (0, 32, 40, 48)}[slices]
    op = T.ResolvedOp(f"expand{slices}", "expand", 0, offsets, slices)
    comps = T.standard_compositions(rng)
    comps["decode-8"] = T.decode_composition(rng, 40, 8, 16)
    for name, comp in comps.items():
        t = T.make_inputs(op, comp, torch.float32, "cpu", 7)  # NaN wherever an expand must not read
        ref = T.ref_expand(comp, t["x"], t["b"], offsets, t["base"])
        ops = mod.stacked_operands(comp, t["x"], t["b"], offsets)
        assert [(lo, hi) for _, _, lo, hi in ops] == list(zip(offsets, offsets[1:]))
        for xj, bj, lo, hi in ops:
            assert xj.shape == (comp.tokens, comp.num_lora * comp.max_r) and bj.shape == (xj.shape[1], hi - lo)
        torch.testing.assert_close(mod.stacked_expand(ops, t["base"]), ref, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
        assert mod.stacked_bytes(comp, ops) == sum(
            4 * (comp.tokens * comp.num_lora * comp.max_r + comp.num_lora * comp.max_r * (hi - lo) + 2 * comp.tokens * (hi - lo))
            for lo, hi in zip(offsets, offsets[1:]))
