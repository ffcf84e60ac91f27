"""Session 31 probe: the wgmma / cp.async lines of the prefill shrink kernel's PTX for one plan
(args: block_m block_n n_sub block_k num_warps num_stages), compiled for sm_90 by the Triton installed."""
import sys, re
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")  # run from the repository root
import compile_report as cr
from lora.triton import tiling
from lora.triton.shrink import _shrink_kernel
bm, bn, nsub, bk, warps, stages = map(int, sys.argv[1:7])
plan = tiling.ShrinkPlan(bm, bn, nsub, bk, 1, warps, stages)
t = "*bf16"
types = dict(x_ptr=t, w_ptr=t, out_ptr=t, ws_ptr="*fp32", cnt_ptr="*i32", group_rows="*i32", group_start="*i32", row_order="*i32", lora_ranks="*i32")
consts = dict(STACK=3, N_OUT=nsub*bn if nsub*bn>=192 else 192, BLOCK_M=bm, BLOCK_N=bn, N_SUB=nsub, BLOCK_K=bk, SPLIT_K=1, GROUP_GRID=False,
              L_BLOCK=16, PRECISION="ieee", STREAM_K=False, PARTIALS=False, PDL_TRIGGER=False)
k = cr.compile_kernel(_shrink_kernel, types, consts, warps, stages)
ptx = k.asm["ptx"]
lines = [l.strip() for l in ptx.splitlines()]
for i,l in enumerate(lines):
    if "wgmma" in l or "cp.async.wait" in l or "bar.sync" in l or "cp.async.commit" in l or l.startswith("@%p") and "bra" in l or l.endswith(":") :
        print(i, l[:110])
