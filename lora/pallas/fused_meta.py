"""The torch executor's metadata builder, fused by ``torch.compile`` on CUDA devices.

:func:`lora.pallas.meta.build` is about 40 small int32 torch ops a batch. Run op by op, each is a kernel in every
captured decode step (on the H100: 62 kernels, 113-118 us a batch, about 3.5 us of each of Llama-3-8B's 32
layers). The JAX executor's builder is the same function fused by XLA; here inductor fuses it: 12 kernels, about
21 us a batch, and the H100 decode step 3-8% faster (``benchmarks/results/h100/s41``). Still one builder: this
module compiles :func:`lora.pallas.meta.build` itself, and its results are bitwise those of the op-by-op run
(integer ops only; a GPU test checks it).

* A batch shape runs compiled from its second build outside a capture on (``FusedBuilder.COMPILE_AT``): a shape
  built once (a test, a one-off batch) never pays for compiling (seconds). Serving engines build each batch size
  more than once before they capture it (warm-up runs).
* Compiling inside a CUDA-graph capture is not safe: a captured build runs compiled only if its shape already ran
  compiled outside a capture, else op by op (same results, more kernels).
* One compiled function per (adapter count, units, 64-row groups, empty batch or not), where groups is the
  token bucket's (powers of two): static sizes, so inductor fuses the sorts (H100: 12 kernels a decode batch; all
  sizes dynamic gave 16-17 and 31-34 us against 21). The segment count varies within it: the first length
  compiles static, the second a graph with that length symbolic (``torch.compile``'s automatic dynamic shapes).
* If compiling fails (no C compiler, an inductor error), a warning names the error once and the device's builds
  run op by op from then on.
* Each call shape's first compiled build (outside a capture) is checked against the op-by-op builder: an
  extra op-by-op build and one host sync, once per shape. A difference (inductor once miscompiled a sliced
  ``searchsorted``: ``benchmarks/results/h100/s41``) is handled as a failure to compile: one warning, the op-by-op
  result returned, op by op from then on. A spot check of one batch per shape, not a proof for every batch.
* ``LORA_PALLAS_EAGER_META=1`` (read when the first backend builds on a device) runs every build op by op.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import meta as M

__all__ = ["EAGER_ENV", "FusedBuilder", "builder_for"]

EAGER_ENV = "LORA_PALLAS_EAGER_META"

_BUILDERS: dict = {}

#: graphs dynamo may compile for the builder (all keys together; each key makes two or three)
RECOMPILE_LIMIT = 256


def builder_for(device) -> "FusedBuilder":
    """The process's builder for ``device`` (compiled functions are shared by every backend on it)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    b = _BUILDERS.get(device)
    if b is None:
        b = _BUILDERS[device] = FusedBuilder(device)
    return b


class FusedBuilder:
    """``builder(seg_indptr, weight_indices, lora_ranks, bs=, num_lora=, groups=, units=)``:
    :func:`lora.pallas.meta.build` on one device, compiled where possible (see the module)."""

    #: a call shape runs compiled from its COMPILE_AT-th build outside a capture on
    COMPILE_AT = 2

    def __init__(self, device):
        self.device = torch.device(device)
        self.ex = _namespace(self.device, keep=True)  # the op-by-op builds' namespace
        self.enabled = self.device.type == "cuda" and os.environ.get(EAGER_ENV, "") != "1"
        self._fns: dict = {}  # (num_lora, units, groups, empty) -> compiled build
        self._builds: dict = {}  # call shape -> builds outside a capture (compiled from COMPILE_AT on)
        self.failure: str | None = None  # why builds run op by op from now on (a compile failed or differed)
        self.runs = {"compiled": 0, "eager": 0}  # builds of each kind so far

    def __call__(self, seg_indptr, weight_indices, lora_ranks, *, bs: int, num_lora: int, groups: int, units: bool):
        kw = dict(bs=bs, num_lora=num_lora, groups=groups, units=units)
        if not self.enabled or self.failure is not None:
            return self._eager(seg_indptr, weight_indices, lora_ranks, kw)
        key = (num_lora, units, groups, bs == 0)  # the compiled function's (bs itself is not compiled in)
        shape = key + (seg_indptr.shape, weight_indices.shape, lora_ranks.shape)
        # builds outside a capture count; a captured build never compiles (not safe inside a capture), so it runs
        # compiled only where its shape's count already reached COMPILE_AT (and so ran compiled)
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if not capturing:
            self._builds[shape] = self._builds.get(shape, 0) + 1
        count = self._builds.get(shape, 0)
        if count < self.COMPILE_AT:
            return self._eager(seg_indptr, weight_indices, lora_ranks, kw)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = torch.compile(_Build(self.device, *key), fullgraph=True)
        try:
            # every key's function runs one code object (_Build.__call__): dynamo's limit of graphs per code
            # object (8 by default) would count all keys' graphs together
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                out = fn(seg_indptr, weight_indices, lora_ranks)
        except Exception as e:  # noqa: BLE001 - any compile failure: the op-by-op builder gives the same result
            self._fail(f"compiling the metadata builder failed ({type(e).__name__}: {e}".splitlines()[0][:300] + ")")
            return self._eager(seg_indptr, weight_indices, lora_ranks, kw)
        if count == self.COMPILE_AT and not capturing:  # this shape's first compiled build: checked once
            want = M.build(self.ex, seg_indptr, weight_indices, lora_ranks, **kw)
            if not torch.equal(out, want):
                self._fail(f"the compiled metadata builder's result differs from the op-by-op builder's (batch of "
                           f"{bs} segments, {num_lora} adapters, {groups} groups)")
                self.runs["eager"] += 1
                return want
        self.runs["compiled"] += 1
        return out

    def _fail(self, why: str) -> None:
        """Builds on this device run op by op from now on; one warning says why."""
        self.failure = why
        warnings.warn(f"lora.pallas: {why}; it runs op by op on {self.device} from now on (same results, more "
                      f"kernels a batch)", RuntimeWarning, stacklevel=4)

    def _eager(self, seg_indptr, weight_indices, lora_ranks, kw):
        self.runs["eager"] += 1
        return M.build(self.ex, seg_indptr, weight_indices, lora_ranks, **kw)


class _Build:
    """The function compiled: :func:`lora.pallas.meta.build` for one (device, adapter count, units, groups, empty
    batch or not), with a namespace that keeps nothing between calls (inductor folds the layout-only arrays into
    its kernels). The segment arrays' lengths are its only sizes that vary: ``torch.compile``'s automatic dynamic
    shapes make them symbolic at the second length seen (``build`` reads ``bs`` only to tell an empty batch)."""

    def __init__(self, device, num_lora: int, units: bool, groups: int, empty: bool):
        self.ns = _namespace(device, keep=False)
        self.num_lora, self.units, self.groups, self.empty = num_lora, units, groups, empty

    def __call__(self, seg_indptr, weight_indices, lora_ranks):
        bs = 0 if self.empty else weight_indices.shape[0]
        return M.build(self.ns, seg_indptr, weight_indices, lora_ranks, bs=bs, num_lora=self.num_lora,
                       groups=self.groups, units=self.units)


def _namespace(device, keep: bool):
    from .backend import TorchExecutor

    if keep:
        return TorchExecutor(device, launcher=_no_launch)

    class _Fresh(TorchExecutor):
        def const(self, key, fn):
            return fn()

    return _Fresh(device, launcher=_no_launch)


def _no_launch(*args, **kwargs):  # the namespace is used for index arithmetic only
    raise AssertionError("the metadata namespace launched a kernel")
