"""Device diagnostics: run one kernel path in isolation (used when a kernel faults).

    python benchmarks/pallas_diag.py jax shrink 64        # JAX API (XLA launches the kernel)
    python benchmarks/pallas_diag.py torch qkv decode64   # torch backend (our launcher)
"""
import os, sys, time
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import numpy as np
from tests.lora import contract as C

path, op, case = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
if case.startswith("decode"):
    comp = C.decode_composition(rng, int(case[6:]), 8, 16)
elif case == "mixed":
    comp = C.Composition([300, 0, 500, 211], [2, 1, 0, 2], [64, 64, 29, 0], [0.5, 1.0, 2.0, 1.5], 64, 1013)
else:
    comp = C.Composition([int(case)], [0], [16, 16], [1.0, 1.0], 16, int(case))
K, Q, KV = 4096, 4096, 1024
t0 = time.time()
if path == "jax":
    import jax, jax.numpy as jnp
    from lora import pallas as lp
    f64 = lambda t: np.asarray(jnp.asarray(t, jnp.float32), np.float64)
    bt = lambda: lp.make_batch(jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32),
                               jnp.asarray(comp.lora_ranks, jnp.int32), jnp.asarray(comp.scalings, jnp.float32), num_tokens=comp.tokens)
    x = jnp.asarray(C.activations(rng, comp, K), jnp.bfloat16)
    if op == "shrink":
        a = jnp.asarray(C.shrink_weights(rng, comp, 3, K), jnp.bfloat16)
        out = jax.jit(lambda x, a: lp.shrink(x, a, bt(), stack=3))(x, a)
        ref = C.ref_shrink(comp, f64(x), f64(a), 3)
    elif op == "expand":
        xe = jnp.asarray(C.expand_input(rng, comp, 1), jnp.bfloat16)
        b = jnp.asarray(C.expand_weights(rng, comp, Q), jnp.bfloat16); base = jnp.asarray(C.base_output(rng, comp, Q), jnp.bfloat16)
        out = jax.jit(lambda x, b, base: lp.expand(x, b, bt(), base=base))(xe, b, base)
        ref = C.ref_expand(comp, f64(xe), f64(b), [0, Q], f64(base))
    else:
        a = jnp.asarray(C.shrink_weights(rng, comp, 3, K), jnp.bfloat16)
        b = jnp.asarray(C.expand_weights(rng, comp, Q + 2 * KV), jnp.bfloat16); base = jnp.asarray(C.base_output(rng, comp, Q + 2 * KV), jnp.bfloat16)
        out = jax.jit(lambda x, a, b, base: lp.qkv_lora(x, a, b, bt(), q=Q, kv=KV, base=base))(x, a, b, base)
        ref = C.ref_stacked(comp, f64(x), f64(a), f64(b), [0, Q, Q + KV, Q + 2 * KV], f64(base))
    chk = C.compare(f64(out), ref, "bfloat16")
else:
    import torch, lora
    from tests.lora.torch_cases import run_op
    be = lora.get_backend_from_name("pallas")("pallas")
    chk, _ = run_op(be, op, comp, rng, "bfloat16", "cuda", k=K, n=Q, kv=KV)
    torch.cuda.synchronize()
print(f"DIAG {path} {op} {case}: {'OK' if chk.ok else 'BAD'} {chk.detail} ({time.time()-t0:.1f}s)", flush=True)
