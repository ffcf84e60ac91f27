"""Isolate a faulting Mosaic kernel: one variant per process (see pallas_diag.py)."""
import os, sys, functools
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import numpy as np
V = sys.argv[1]
import jax, jax.numpy as jnp
from lora.pallas import shrink_kernel as SK, expand_kernel as EK, tiling as T, api, interop
from tests.lora import contract as C
rng = np.random.default_rng(0)
s = int(sys.argv[2]) if len(sys.argv) > 2 else 64
NL = int(os.environ.get("NL", "8"))
comp = C.decode_composition(rng, s, NL, 16) if s <= 256 else C.Composition([s // 2, s - s // 2], [1, min(3, NL - 1)], [16] * NL, [1.0] * NL, 16, s)
stack, K = int(os.environ.get("STACK", "1")), 4096
bpad = T.padded_tokens(s)
meta = api.build_meta(jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32), jnp.asarray(comp.lora_ranks, jnp.int32), num_tokens=s, bpad=bpad)
x = jnp.asarray(rng.standard_normal((bpad, K)), jnp.bfloat16)
a = jnp.asarray(rng.standard_normal((NL, stack * 16, K)) / 64, jnp.bfloat16)
ranks = jnp.asarray(comp.lora_ranks, jnp.int32)
tail = "tail" in V
cfg = T.shrink_config(bpad, K, stack * 16, NL, stack, "bfloat16", tail=tail)
if "block" in V:
    import dataclasses; cfg = dataclasses.replace(cfg, split=False, ksplit=1)
xt = x[bpad - 64:]
if "torch" in V:
    import torch
    sds = jax.ShapeDtypeStruct
    specs = [sds(meta.shape, jnp.int32), sds((NL,), jnp.int32), sds(x.shape, jnp.bfloat16), sds((64, K), jnp.bfloat16), sds(a.shape, jnp.bfloat16)]
    if cfg.split:
        specs.append(sds((bpad, stack * 16), jnp.float32))
        fn = lambda m, r, x_, xt_, a_, ws: SK.shrink_split(m, r, x_, xt_ if tail else None, a_, ws, cfg=cfg)
    else:
        fn = lambda m, r, x_, xt_, a_: SK.shrink_block(m, r, x_, xt_ if tail else None, a_, cfg=cfg)
    k = interop.MosaicKernel(fn, specs)
    tt = lambda v, dt: torch.from_numpy(np.asarray(jnp.asarray(v, jnp.float32))).to("cuda", dt).contiguous()
    tm, tr, tx, ta = tt(meta, torch.int32), tt(ranks, torch.int32), tt(x, torch.bfloat16), tt(a, torch.bfloat16)
    txt = tx[bpad - 64:]
    if cfg.split:
        out = torch.zeros(bpad, stack * 16, device="cuda")
        k.launch([p.data_ptr() for p in (tm, tr, tx, txt, ta, out)], [None], torch.cuda.current_stream().cuda_stream)
    else:
        out = torch.empty(bpad, stack * 16, device="cuda")
        k.launch([p.data_ptr() for p in (tm, tr, tx, txt, ta)], [out.data_ptr()], torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    out = out.cpu().numpy()
else:
    if cfg.split:
        f = jax.jit(lambda m, r, x_, xt_, a_: SK.shrink_split(m, r, x_, xt_ if tail else None, a_, jnp.zeros((bpad, stack * 16), jnp.float32), cfg=cfg))
    else:
        f = jax.jit(lambda m, r, x_, xt_, a_: SK.shrink_block(m, r, x_, xt_ if tail else None, a_, cfg=cfg))
    out = np.asarray(f(meta, ranks, x, xt, a))
f64 = lambda t: np.asarray(jnp.asarray(t, jnp.float32), np.float64)
ref = C.ref_shrink(comp, f64(x)[:s], f64(a), stack)
err = np.abs(out[:s] - ref).max() / np.abs(ref).max()
print(f"DIAG2 {V} s={s} split={cfg.split} tail={tail}: rel max err {err:.3g}", flush=True)
