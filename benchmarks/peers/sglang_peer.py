"""SGLang 0.5.23's ``triton`` and ``csgmv`` LoRA backends as kernelstack backends (peers, for comparison).

``peer-sglang`` (SGLang's ``--lora-backend triton``): ``sgemm_lora_a_fwd`` for every shrink,
``sgemm_lora_b_fwd`` / ``qkv_lora_b_fwd`` / ``gate_up_lora_b_fwd`` for the expands, with the batch
metadata SGLang's ``TritonLoRABackend.prepare_lora_batch`` builds: for a decode batch (every segment one
token) the tokens sorted by adapter into one segment per slot (``_build_sgemm_routing``: a permutation,
``max_len`` = the token count); otherwise the request segments as they are.

``peer-sglang-csgmv`` (SGLang's default, ``--lora-backend csgmv`` with the default
``--max-lora-chunk-size 16``; ``peer-sglang-csgmv128``: the same with ``--max-lora-chunk-size 128``, SGLang's
largest, whose chunk size then follows the token count: 16 below 64 tokens, 32 below 256, else 128): ``chunked_sgmv_lora_shrink_forward`` / ``chunked_sgmv_lora_expand_forward``
with the metadata of ``ChunkedSgmvLoRABackend.prepare_lora_batch``: tokens sorted by adapter (a stable
argsort of each row's slot), then cut into chunks of at most ``chunk_size`` rows of one adapter; the
expand gets the host copy of the output offsets, as SGLang's layers pass it.

Both build their metadata on the host, as SGLang does (from its Python lists), once per batch
(``prepare``), into device tensors the kernels then read; the per-op calls are SGLang's launch functions
unchanged (each allocates its shrink output with ``torch.empty``, as in SGLang). The metadata is the
eager (not CUDA-graph) form: a grid of exactly the batch's segments, never the graph form's padded
one, which can only favour the peer.

Semantics: SGLang's shrinks leave the columns past ``stack * rank`` of a slot, and every column of a
rank-0 slot's rows, unwritten (``torch.empty``); kernelstack's contract writes zeros there. The
Llama-3-8B cases load every slot at the full rank, so they compare like for like; a case with smaller
or zero ranks reports those shrink rows as wrong for the peer (the fused ops still match).
"""

from __future__ import annotations

import torch

from lora.backend import BaseLoRABackend
from lora.registry import register_backend

from peer_common import HostOffsets, missing_module

_DENSE = "sglang.kernels.ops.lora.dense"
#: SGLang's default --max-lora-chunk-size (sglang/srt/arg_groups/fields/lora.py) and its floor.
MAX_CHUNK_SIZE = 16
MIN_CHUNK_SIZE = 16


def _sglang_modules(*names: str) -> str | None:
    import sglang_stubs

    sglang_stubs.install()
    return missing_module("sglang.srt.lora.utils", *(f"{_DENSE}.{n}" for n in names))


def _host_segments(bi) -> tuple[list[int], list[int]]:
    return [int(v) for v in bi.seg_lens.tolist()], [int(v) for v in bi.weight_indices.tolist()]


class _SGLangBackend(BaseLoRABackend):
    _modules: tuple[str, ...] = ()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _sglang_modules(*cls._modules)

    def __init__(self, name, batch_info=None):
        self._info = None
        self._host_offsets = HostOffsets()
        super().__init__(name, batch_info)

    def _device_ints(self, values: list[int], device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32).to(device)

    @staticmethod
    def _batch_info_cls():
        from sglang.srt.lora.utils import LoRABatchInfo

        return LoRABatchInfo


@register_backend("peer-sglang")
class SGLangTritonPeer(_SGLangBackend):
    description = "SGLang 0.5.23 --lora-backend triton (sgemm_lora_a/b, qkv_lora_b, gate_up_lora_b)"
    _modules = ("sgemm_lora_a", "sgemm_lora_b", "qkv_lora_b", "gate_up_lora_b")

    def prepare(self, bi) -> None:
        dev = bi.seg_indptr.device
        lens, slots = _host_segments(bi)
        num_lora = bi.lora_ranks.numel()
        LoRABatchInfo = self._batch_info_cls()
        if lens and all(n == 1 for n in lens):
            # decode: TritonLoRABackend._build_sgemm_routing (segments merged by adapter, tokens permuted)
            perm = sorted(range(len(slots)), key=lambda i: slots[i])  # stable, like torch.argsort(stable=True)
            counts = [slots.count(w) for w in range(num_lora)]
            indptr = [0]
            for c in counts:
                indptr.append(indptr[-1] + c)
            self._info = LoRABatchInfo(
                use_cuda_graph=False, bs=num_lora, num_segments=num_lora,
                seg_indptr=self._device_ints(indptr, dev), weight_indices=self._device_ints(list(range(num_lora)), dev),
                lora_ranks=bi.lora_ranks, scalings=bi.scalings, max_len=len(slots),
                seg_lens=self._device_ints(counts, dev), permutation=self._device_ints(perm, dev),
            )
        else:
            self._info = LoRABatchInfo(
                use_cuda_graph=False, bs=len(lens), num_segments=len(lens), seg_indptr=bi.seg_indptr,
                weight_indices=bi.weight_indices, lora_ranks=bi.lora_ranks, scalings=bi.scalings,
                max_len=max(lens, default=0), seg_lens=bi.seg_lens, permutation=None,
            )

    def shrink(self, x, weights, stack_num):
        from sglang.kernels.ops.lora.dense.sgemm_lora_a import sgemm_lora_a_fwd

        return sgemm_lora_a_fwd(x, weights, self._info, stack_num=stack_num)

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        stack = output_offset.numel() - 1
        if stack == 1:
            from sglang.kernels.ops.lora.dense.sgemm_lora_b import sgemm_lora_b_fwd

            return sgemm_lora_b_fwd(x, weights, self._info, base_output)
        if stack == 2:
            from sglang.kernels.ops.lora.dense.gate_up_lora_b import gate_up_lora_b_fwd

            return gate_up_lora_b_fwd(x, weights, self._info, max_slice_width, base_output)
        from sglang.kernels.ops.lora.dense.qkv_lora_b import qkv_lora_b_fwd

        return qkv_lora_b_fwd(x, weights, self._info, output_offset, max_slice_width, base_output, n_slices=stack)


@register_backend("peer-sglang-csgmv")
class SGLangCsgmvPeer(_SGLangBackend):
    description = "SGLang 0.5.23 --lora-backend csgmv (its default; chunked SGMV, chunks of <= 16 rows)"
    _modules = ("chunked_sgmv_shrink", "chunked_sgmv_expand")

    #: SGLang's --max-lora-chunk-size.
    max_chunk_size = MAX_CHUNK_SIZE

    def chunk_size(self, num_tokens: int) -> int:
        """ChunkedSgmvLoRABackend._determine_chunk_size_for_tokens."""
        if self.max_chunk_size <= MIN_CHUNK_SIZE:
            return MIN_CHUNK_SIZE
        return min(self.max_chunk_size, 128 if num_tokens >= 256 else 32 if num_tokens >= 64 else 16)

    def prepare(self, bi) -> None:
        dev = bi.seg_indptr.device
        lens, slots = _host_segments(bi)
        row_slots = [w for n, w in zip(lens, slots) for _ in range(n)]
        chunk = self.chunk_size(len(row_slots))
        perm = sorted(range(len(row_slots)), key=lambda i: row_slots[i])  # stable argsort by slot
        # chunks of at most `chunk` rows of one adapter, in sorted order (_get_segments_info)
        seg_slots, indptr, start = [], [0], 0
        while start < len(perm):
            w = row_slots[perm[start]]
            end = start
            while end < len(perm) and row_slots[perm[end]] == w:
                end += 1
            for lo in range(start, end, chunk):
                seg_slots.append(w)
                indptr.append(min(lo + chunk, end))
            start = end
        req_indptr = [0]
        for n in lens:
            req_indptr.append(req_indptr[-1] + n)
        LoRABatchInfo = self._batch_info_cls()
        self._info = LoRABatchInfo(
            use_cuda_graph=False, bs=len(lens), num_segments=len(seg_slots), max_len=chunk,
            seg_indptr=self._device_ints(indptr, dev), weight_indices=self._device_ints(seg_slots, dev),
            lora_ranks=bi.lora_ranks, scalings=bi.scalings, permutation=self._device_ints(perm, dev), seg_lens=None,
            req_seg_indptr=self._device_ints(req_indptr, dev), req_weight_indices=self._device_ints(slots, dev),
        )

    def shrink(self, x, weights, stack_num):
        from sglang.kernels.ops.lora.dense.chunked_sgmv_shrink import chunked_sgmv_lora_shrink_forward

        return chunked_sgmv_lora_shrink_forward(x=x, weights=weights, batch_info=self._info, num_slices=stack_num)

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        from sglang.kernels.ops.lora.dense.chunked_sgmv_expand import chunked_sgmv_lora_expand_forward

        host = torch.tensor(self._host_offsets(output_offset), dtype=output_offset.dtype)
        return chunked_sgmv_lora_expand_forward(
            x=x, weights=weights, batch_info=self._info, slice_offsets=output_offset, max_slice_size=max_slice_width,
            base_output=base_output, slice_offsets_cpu=host,
        )


@register_backend("peer-sglang-csgmv128")
class SGLangCsgmv128Peer(SGLangCsgmvPeer):
    description = "SGLang 0.5.23 --lora-backend csgmv --max-lora-chunk-size 128 (its largest chunks)"
    max_chunk_size = 128
