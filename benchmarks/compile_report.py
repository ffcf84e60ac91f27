"""Compile the Triton kernels for sm_90 without a GPU and report resources (registers, spills,
shared memory) and whether the main loop was software-pipelined (cp.async) and uses wgmma.

    python benchmarks/compile_report.py            # the default plans of the Llama-3-8B cases
    python benchmarks/compile_report.py --jobs < jobs.json   # given plans (see run_jobs); JSON out

Arguments get the specialisation a real launch gives them (16-byte aligned pointers, strides
divisible by 16), so the code matches what runs on the device as long as the Triton versions agree.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lora.triton import tiling  # noqa: E402
from lora.triton.expand import _expand_kernel  # noqa: E402
from lora.triton.grouping import _derive_kernel, derive_blocks  # noqa: E402
from lora.triton.shrink import _shrink_kernel  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DIV16 = {"x_ptr", "w_ptr", "out_ptr", "ws_ptr", "cnt_ptr", "group_rows", "group_start", "row_order",
         "lora_ranks", "scalings", "offsets_ptr", "K", "stride_xm", "stride_wl", "stride_wn", "stride_om"}


def compile_kernel(fn, types: dict, consts: dict, num_warps: int, num_stages: int, div16=DIV16):
    """``consts``: the launch's constexpr values; a constexpr parameter not given takes its default, as at a
    launch (before session 24 such parameters were compiled as runtime int32 arguments: their branches were
    in the code, and a constexpr loop bound among them did not compile)."""
    consts = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.name not in consts
                 and p.default is not inspect.Parameter.empty}, **consts}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = types.get(name, "i32")
        if name in div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=TARGET,
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def mma_loop(sass: str) -> dict:
    """The innermost loop holding the matrix instructions (HGMMA, else HMMA): its instruction count and how
    many of them move registers to uniform registers (R2UR: wgmma descriptors built in vector registers,
    which ptxas does when it cannot prove a loop's control flow uniform; seen on Triton 3.6 in session 13)."""
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    mma = [a for a, i in ins if "HGMMA" in i] or [a for a, i in ins if "HMMA" in i]
    best = None
    for a, i in ins:
        m = re.search(r"BRA\s+(?:\S+,\s*)?0x([0-9a-f]+)", i)
        if m and int(m.group(1), 16) < a and any(int(m.group(1), 16) <= h <= a for h in mma):
            if best is None or a - int(m.group(1), 16) < best[1] - best[0]:
                best = (int(m.group(1), 16), a)
    body = [i for a, i in ins if best and best[0] <= a <= best[1]]
    return {"loop_instrs": len(body), "loop_r2ur": sum("R2UR" in i for i in body)}


def resources(k) -> dict:
    ptx = k.asm["ptx"]
    out = {"smem": k.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"), "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca")}
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.cubin")
        with open(p, "wb") as f:
            f.write(k.asm["cubin"])
        txt = subprocess.run([cuobjdump, "--dump-resource-usage", p], capture_output=True, text=True).stdout
        for key, pat in (("regs", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("local", r"LOCAL:(\d+)")):
            m = re.search(pat, txt)
            out[key] = int(m.group(1)) if m else None
        out.update(mma_loop(subprocess.run([cuobjdump, "-sass", p], capture_output=True, text=True).stdout))
    return out


def shrink_report(dtype: str, stack: int, n_out: int, plan: tiling.ShrinkPlan, num_lora=8, bs=8, partials=False):
    """``partials``: the decode shrink that leaves its splits' float32 sums to the expand (FusedPlan.partials)."""
    t = "*" + {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[dtype]
    types = dict(x_ptr=t, w_ptr=t, out_ptr="*fp32" if partials else t, ws_ptr="*fp32", cnt_ptr="*i32",
                 group_rows="*i32", group_start="*i32", row_order="*i32", lora_ranks="*i32")
    consts = dict(STACK=stack, N_OUT=n_out, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, N_SUB=plan.n_sub,
                  BLOCK_K=plan.block_k, SPLIT_K=plan.split_k, GROUP_GRID=plan.group_grid,
                  L_BLOCK=tiling.group_block(num_lora + 1), PRECISION="tf32x3" if dtype == "fp32" else "ieee",
                  STREAM_K=plan.stream_k > 0, PARTIALS=partials, PDL_TRIGGER=plan.group_grid, TMA=plan.tma)
    if plan.tma:  # tiles through tensor descriptors (host-made, as lora_shrink makes them)
        types.update(x_desc=f"tensordesc<{dtype}[{plan.block_m}, {plan.block_k}]>",
                     w_desc=f"tensordesc<{dtype}[{plan.block_n}, {plan.block_k}]>")
    else:
        consts.update(x_desc=None, w_desc=None)
    return resources(compile_kernel(_shrink_kernel, types, consts, plan.num_warps, plan.num_stages))


def expand_report(dtype: str, max_r: int, plan: tiling.ExpandPlan, num_lora=8, bs=8, x_splits=1):
    """``x_splits > 1``: the expand adding up a shrink's float32 partials, as the dependent of that shrink."""
    t = "*" + dtype
    types = dict(x_ptr="*fp32" if x_splits > 1 else t, w_ptr=t, out_ptr=t, offsets_ptr="*i32", group_rows="*i32",
                 group_start="*i32", row_order="*i32", lora_ranks="*i32", scalings="*fp32")
    consts = dict(BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_R=tiling.rank_block(max_r), N_ITERS=plan.n_iters,
                  GROUP_GRID=plan.group_grid, L_BLOCK=tiling.group_block(num_lora),
                  PRECISION="tf32x3" if dtype == "fp32" else "ieee", ALIGN=16,
                  RAGGED_N=max(16, plan.block_n // 4), ACC_BASE=plan.acc_base and dtype != "fp16",
                  X_SPLITS=x_splits, PDL=2 if x_splits > 1 else 0)
    return resources(compile_kernel(_expand_kernel, types, consts, plan.num_warps, plan.num_stages))


def run_jobs(jobs: list[dict]) -> list[dict]:
    """``--jobs``: each job ``{"op": "shrink", "stack", "n", "plan": {ShrinkPlan fields}, "partials"}`` or
    ``{"op": "expand", "max_r", "plan": {ExpandPlan fields}, "x_splits"}`` (bf16); its resources, or its error."""
    out = []
    for job in jobs:
        try:
            if job["op"] == "shrink":
                res = shrink_report("bf16", job["stack"], job["n"], tiling.ShrinkPlan(**job["plan"]),
                                    partials=job.get("partials", False))
            else:
                res = expand_report("bf16", job["max_r"], tiling.ExpandPlan(**job["plan"]),
                                    x_splits=job.get("x_splits", 1))
        except Exception as exc:  # noqa: BLE001  (reported per job)
            res = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
        out.append(res)
    return out


def derive_report(bs: int, num_lora: int):
    """The once-per-batch grouping kernel (lora.triton.grouping)."""
    l_block, seg_block, row_block = derive_blocks(bs, num_lora)
    types = dict(seg_lens="*i32", seg_indptr="*i32", weight_indices="*i32", group_rows="*i32", group_start="*i32",
                 row_order="*i32")
    consts = dict(L_BLOCK=l_block, SEG_BLOCK=seg_block, ROW_BLOCK=row_block)
    return resources(compile_kernel(_derive_kernel, types, consts, 4, 1, div16=set(types)))


def main():
    print(f"triton {triton.__version__}, target sm_90")
    for bs, num_lora in ((8, 8), (256, 8), (4096, 64)):
        print(f"derive bs={bs} num_lora={num_lora}: {derive_blocks(bs, num_lora)} -> {derive_report(bs, num_lora)}")
    for s, bs in ((8192, 8), (256, 256), (64, 64), (8192, 32)):
        for r in (16, 64):
            for stack, k in ((1, 4096), (2, 4096), (3, 4096), (1, 14336)):
                n_out = stack * r
                plan = tiling.heuristic_shrink(s, k, n_out, 8, 132)
                res = shrink_report("bf16", stack, n_out, plan, bs=bs)
                print(f"shrink s={s} K={k} N={n_out}: {plan} -> {res}")
            plan = tiling.heuristic_expand(s, r, 4096, 8, 1, 132)
            print(f"expand s={s} r={r}: {plan} -> {expand_report('bf16', r, plan, bs=bs)}")
    # stream-K beside the plain plan of the same tile (session 13: the K loop must compile alike)
    for plan in (tiling.ShrinkPlan(64, 64, 3, 128, 1, 4, 3), tiling.ShrinkPlan(64, 64, 3, 128, 1, 4, 3, stream_k=1)):
        print(f"shrink s=8192 K=4096 N=192: {plan} -> {shrink_report('bf16', 3, 192, plan)}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--jobs"]:  # jobs as JSON on stdin, their results as JSON on stdout (tests/lora/test_triton_sm90.py)
        import json

        json.dump(run_jobs(json.load(sys.stdin)), sys.stdout)
    else:
        main()
