"""Small Mosaic GPU helpers shared by the shrink and expand kernels (jax only, no torch)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .tiling import BM, BOX_SPAN, PDL_DEPENDENT, SHIFTS

#: Python-side counter of kernel traces (lowerings); the no-recompile tests read it.
TRACE_COUNT = {"shrink": 0, "expand": 0, "parts": 0}


def interpret_mode_active() -> bool:
    """True inside ``plgpu.force_gpu_interpret_mode(...)`` (kernels then run on the CPU)."""
    from jax._src import config

    return config.pallas_tpu_interpret_mode_context_manager.value is not None


def tile_columns(dtype, cols: int) -> int:
    """Columns of one tile of :func:`tiled` (a copy into such a buffer starts on a multiple of them)."""
    itemsize = jnp.dtype(dtype).itemsize
    return plgpu.find_swizzle(cols * itemsize * 8) // itemsize


def tiled(dtype, cols: int):
    """SMEM transforms that make a (rows, cols) tile a wgmma operand (8-row tiles, widest swizzle)."""
    tc = tile_columns(dtype, cols)
    return (plgpu.TilingTransform((8, tc)), plgpu.SwizzleTransform(tc * jnp.dtype(dtype).itemsize))


def mgpu_call(body, args, *, out_type, grid, grid_names, scratch=(), aliases=None, lane=False, threads=0, pdl=0,
              early=False):
    """``plgpu.kernel`` plus input/output aliasing (in-place outputs for the JAX API).

    ``lane``: lower with Lane semantics (explicit register layouts, no layout inference).
    ``threads``: warpgroups a CTA runs (axis ``"wg"``; 0: one), the scratch shared by all of them.
    ``pdl``: the launch's :data:`lora.pallas.tiling.PDL_OFF` / ``PDL_DEPENDENT`` / ``PDL_WAIT``. In a
    dependent, every warpgroup runs the wait (and, but for ``PDL_WAIT``, the trigger) before the body, after its
    shared memory is set up; a dependent kernel (one with a ``griddepcontrol.wait``) is lowered with Mosaic's
    ``uses_pdl``, so that its launch carries the programmatic stream serialization attribute. Interpret mode
    runs kernels one after another and has no such primitives: it ignores ``pdl``.
    ``early``: the body waits itself: it is called with ``dep_wait=`` a function that runs the wait (and the
    trigger), which every CTA must call exactly once, on every path, before it touches memory that the kernel
    before it may write (see :data:`lora.pallas.tiling.PDL_OFF` for what it may read before).
    """
    from jax._src import config
    from jax._src.pallas import mpmd

    interpret = config.pallas_tpu_interpret_mode_context_manager.value or False
    if threads > 1 and interpret:
        check_interpret_threads(threads)
    mesh = plgpu.Mesh(grid=grid, grid_names=grid_names, **(dict(num_threads=threads, thread_name="wg") if threads else {}))

    def dep_wait():
        if pdl and not interpret:
            plgpu.griddepcontrol_wait()
            if pdl == PDL_DEPENDENT:
                plgpu.griddepcontrol_launch_dependents()

    def scoped(*refs):
        if early:
            body(*refs, dep_wait=dep_wait)
        else:
            dep_wait()
            body(*refs)

    def kernel_body(*refs):
        pl.run_scoped(functools.partial(scoped, *refs), *scratch, **(dict(collective_axes="wg") if threads else {}))

    return mpmd._mpmd_map(
        [(mesh, kernel_body)],
        out_type,
        input_output_aliases=aliases or {},
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Lane if lane else plgpu.LoweringSemantics.Warpgroup
        ),
        interpret=interpret,
    )(*args)


def check_interpret_threads(threads: int) -> None:
    """Interpret mode runs each of a CTA's ``threads`` warpgroups as its own XLA computation, all at
    once, and they wait for each other at barriers; XLA's CPU client runs max(cores, CPU devices)
    computations at a time, so with fewer the kernel would never finish. Raises instead."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    capacity = max(cores, len(jax.devices("cpu")))
    if capacity < threads:
        raise RuntimeError(
            f"interpret mode of this kernel runs {threads} warpgroups at once, and JAX's CPU client runs at most "
            f"{capacity} computations at a time here ({cores} cores): set jax.config.update('jax_num_cpu_devices', "
            f"{threads}) (or JAX_NUM_CPU_DEVICES={threads}) before JAX starts"
        )


def wgmma_layout(x):
    return plgpu.layout_cast(x, plgpu.Layout.WGMMA)


def col_iota(rows: int, cols: int):
    return plgpu.broadcasted_iota(jnp.int32, (rows, cols), 1, layout=plgpu.Layout.WGMMA)


def row_iota(rows: int, cols: int):
    return plgpu.broadcasted_iota(jnp.int32, (rows, cols), 0, layout=plgpu.Layout.WGMMA)


def wgmma_zeros(rows: int, cols: int, dtype=jnp.float32):
    return plgpu.broadcasted_iota(jnp.int32, (rows, cols), 0, layout=plgpu.Layout.WGMMA).astype(dtype) * 0


def block_count(meta_ref, lay, b):
    """Number of adapters present in block b's own rows."""
    return meta_ref[lay.group(b)]


def block_slot(meta_ref, lay, b, i):
    """The i-th adapter present in block b's own rows (i < block_count)."""
    return meta_ref[lay.group(b) + 1 + i]


def copy_scalars(src_ref, start, dst_smem, n: int):
    """dst_smem[k] = src_ref[start + k] for k < n: n independent scalar loads (unrolled), so they
    wait for global memory once, not once per dependent read later. Every thread stores the same
    values and reads back its own stores: no fence is needed before the reads."""
    for k in range(n):
        dst_smem[k] = src_ref[start + k]


def issue_box_slots(meta_ref, lay, rx, rs_smem, barrier):
    """Start copying the adapter slots of the 64 rows starting at row ``rx`` (a block's box) into
    ``rs_smem``; wait on ``barrier`` (once) before they are read.

    The run starts at a multiple of 4 entries (16 bytes, what a TMA copy needs): group ``rx // 64``,
    shifted copy ``rx % 4`` (layout in :mod:`lora.pallas.tiling`).
    """
    g = lax.div(rx, BM)
    m = rx - g * BM
    k = lax.rem(m, SHIFTS)
    start = lay.group(g) + lay.head + k * BOX_SPAN + (m - k)
    plgpu.copy_gmem_to_smem(meta_ref.at[pl.ds(start, BM)], rs_smem, barrier)


def load_box_slots(meta_ref, lay, rx, rs_smem, barrier):
    """:func:`issue_box_slots`, then wait for them. Read them where they are used."""
    issue_box_slots(meta_ref, lay, rx, rs_smem, barrier)
    plgpu.barrier_wait(barrier)


def ladder(nrows, fn, *, max_rows: int = BM):
    """Cover ``nrows`` (dynamic, 0..max_rows) rows with power-of-two pieces: fn(offset, size, k).

    TMA boxes have static shapes, so a dynamic row count is moved as at most log2(max_rows)+1
    copies (64, 32, ..., 1 rows), each under its own predicate. ``k`` numbers the rungs (barriers).
    """
    off = 0
    size, k = max_rows, 0
    while size >= 1:
        pl.when((nrows & size) != 0)(functools.partial(fn, off, size, k))
        off = off + (nrows & size)
        size //= 2
        k += 1


def ladder_rungs(max_rows: int = BM) -> int:
    return max_rows.bit_length()


def box_start(s, row_lo, tail: bool):
    """(rx, is_tail): the first row of the 64-row box a block starting at ``row_lo`` is computed on,
    and whether it is the clamped box of a partial last block (None without ``tail``: x is padded)."""
    if not tail:
        return row_lo, None
    is_tail = row_lo + BM > s
    return jnp.where(is_tail, jnp.maximum(s - BM, 0), row_lo), is_tail
