"""Time the peers' multi-LoRA kernels beside ours, the way ``python -m lora compare`` times ours.

The peers are other serving engines' kernels as released (SGLang 0.5.23: its ``triton`` backend, its
chunked ``csgmv`` backend and the ``triton_v2`` dense runner; vLLM 0.33.0: its Triton ``lora_shrink`` /
``lora_expand``), each wrapped as a kernelstack backend (``sglang_peer.py``, ``sglang_v2_peer.py``,
``vllm_peer.py`` beside this file) and registered under a ``peer-`` name. ``lora compare`` then checks
every peer against the float64 oracle and times it with the same inputs, input rotation and CUDA-graph
method as our backends, in the same run. The adapters call the peers' public launch functions the way
the engines' own backends do, with the engines' own configs; they add no kernel of their own.

The peers' code is not part of kernelstack: ``bash benchmarks/peers/fetch.sh`` downloads the two
wheels (no dependencies) and unpacks the LoRA subtrees into ``.peers/`` (git-ignored).

Usage (repository root)::

    bash benchmarks/peers/fetch.sh
    PYTHONPATH=. python benchmarks/peers/run.py [--peers DIR] compare --quick \
        --backends triton,peer-sglang,peer-sglang-v2,peer-vllm --case 'llama3-8b-*' --json peers.json

On the CPU (a correctness run, Triton's interpreter: fp16/fp32 only)::

    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/peers/run.py compare --device cpu --dtype float16 \
        --shape hidden=128,q=128,kv=64,inter=256,r=16,adapters=4,segs=mixed:6/40 --backends torch,peer-vllm
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_MODULES = ("sglang_peer", "sglang_v2_peer", "vllm_peer")


def add_peer_paths(peers: str) -> None:
    """The peers' sources first on the path; helper packages last (the interpreter's own win)."""
    src = os.path.join(peers, "src")
    if not os.path.isdir(src):
        raise SystemExit(f"no peer sources in {src}: run `bash benchmarks/peers/fetch.sh` first")
    sys.path.insert(0, src)
    site = os.path.join(peers, "site", f"py{sys.version_info[0]}{sys.version_info[1]}")
    if os.path.isdir(site):
        sys.path.append(site)


def drop_unregistered(argv: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """``argv`` with the ``peer-`` names of ``--backends`` that are not registered left out, and those names."""
    if "--backends" not in argv or argv.index("--backends") + 1 >= len(argv):
        return argv, []
    i = argv.index("--backends") + 1
    names = [n for n in argv[i].split(",") if n]
    kept = [n for n in names if n in known or not n.startswith("peer-")]
    dropped = [n for n in names if n not in kept]
    return [*argv[:i], ",".join(kept), *argv[i + 1:]], dropped


def main(argv: list[str]) -> int:
    peers = ".peers"
    if argv[:1] == ["--peers"]:
        peers, argv = argv[1], argv[2:]
    add_peer_paths(os.path.abspath(peers))
    sys.path.insert(0, HERE)
    import importlib

    for name in PEER_MODULES:  # each registers its backends on import; the peers' kernels load lazily
        try:
            importlib.import_module(name)
        except Exception as exc:  # one broken adapter does not stop the others (its backends are then unknown)
            print(f"peer module {name} not loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
    from lora.compare.cli import main as compare_main
    from lora.registry import available_backends

    argv, dropped = drop_unregistered(argv, {s.name for s in available_backends()})
    for n in dropped:
        print(f"backend {n}: not registered (its adapter did not load); left out", file=sys.stderr)
    return compare_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
