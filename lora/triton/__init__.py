"""Triton kernels of the multi-LoRA contract, registered as the "triton" backend.

* :mod:`.shrink`  -- kernel + launcher: x @ A.T per adapter group, stacked widths, split-K.
* :mod:`.expand`  -- kernel + launcher: base += scaling * x @ B.T over 1..3 output slices.
* :mod:`.grouping` -- the batch's rows grouped by adapter, derived once per batch in one launch
  (``prepare``), and the device-side mapping of a program to (adapter group, chunk of rows).
* :mod:`.tiling`  -- launch plans from shapes: tuned table per device name (``tuned.json``, written
  by ``benchmarks/tune_triton.py``), else a documented heuristic; fitted to shared memory per dtype.
* :mod:`.scratch` -- per-stream split-K workspace and counters (left at zero) and the fused ops'
  intermediate; buffers a CUDA graph captured are never freed.
* :mod:`.backend` -- ``TritonLoRABackend``; build it through ``lora.get_backend_from_name("triton")``.

Importing this package imports nothing; the modules import triton.
"""
