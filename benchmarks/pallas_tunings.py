"""pallas Tuning keyword arguments by name: the knobs ``benchmarks/decode_kernels.py`` times as backend
``pallas:<name>`` and ``benchmarks/pallas_prelower.py --tunings`` lowers ahead (plain Python: no jax, no torch)."""

TUNINGS = {
    "nogather": dict(expand_gather=False),  # session 7's decode expand (one CTA per tile, all its adapters)
    "gt1": dict(expand_gather_tiles=1),
    "gt2": dict(expand_gather_tiles=2),
    "gt4": dict(expand_gather_tiles=4),
    "gt8": dict(expand_gather_tiles=8),
    "gt16": dict(expand_gather_tiles=16),
    "s5": dict(expand_gather=False, expand_accumulate=False, expand_stages=2),  # session 5's (a merge per adapter)
    "noacc": dict(expand_accumulate=False),
    "es2": dict(expand_gather=False, expand_stages=2),
    "es1": dict(expand_gather=False, expand_stages=1),
    "es4": dict(expand_gather=False, expand_stages=4),
    # session 27: every adapter tile of an 8-adapter decode block fetched in the pipeline's prologue
    "es6": dict(expand_gather=False, expand_stages=6),
    "es8": dict(expand_gather=False, expand_stages=8),
    # (gone: session 36's "batched", every slot's tiles fetched at once, and session 38's "perAdapter", a CTA per
    # tile and adapter, both measured no faster: benchmarks/probe_s38/per_adapter.patch brings the latter back)
    # session 38: every block's base rows through the row-exact ladder's plain tile (before the tiled tile for full blocks)
    "nofull": dict(expand_full_tile=False),
    # session 38: the gathering decode expand with four B tiles in flight (before the residency rule's two)
    "gs4": dict(expand_gather_stages=4),
    # session 39: decode launches without programmatic dependent launch (before Tuning.pdl)
    "nopdl": dict(pdl=False),
    "bn64": dict(expand_block_n=64),
    "bn256": dict(expand_block_n=256),
    "bn64es4": dict(expand_block_n=64, expand_stages=4),
    "ks4": dict(shrink_ksplit=4),
    "ks8": dict(shrink_ksplit=8),
    "ks32": dict(shrink_ksplit=32),
    "ks2": dict(shrink_ksplit=2),
    "ks2bk64": dict(shrink_ksplit=2, shrink_block_k=64),  # session 20: the r64 QKV-sized shrinks split in K
    # session 20, with benchmarks/probe_s20/c6_wide.patch applied (one warpgroup; reverted): the K-split
    # block shrink one block a CTA (as before the patch), and two blocks a CTA on the QKV-sized shrinks.
    # Since session 21 Tuning.shrink_wide is on main (the warp-specialized two-block shrink, off by
    # default): "nowide" is then the default, "ks2wide" the same as "wide"
    "nowide": dict(shrink_wide=False),
    "ks2wide": dict(shrink_ksplit=2, shrink_wide=True),
    # session 21: the two-block shrink (a producer warpgroup, a consumer per block; K split 2 / 4; 64-deep steps)
    "wide": dict(shrink_wide=True),
    "wide4": dict(shrink_wide=True, shrink_ksplit=4),
    "widebk64": dict(shrink_wide=True, shrink_block_k=64),
    # the block variant with its K loop split: a CTA runs every adapter of its block (two per K loop),
    # so there are ksplit partial tiles per block instead of adapters x ksplit
    "blk16": dict(split_max_blocks=0, shrink_ksplit=16),
    "blk32": dict(split_max_blocks=0, shrink_ksplit=32),
    "blk8": dict(split_max_blocks=0, shrink_ksplit=8),
    "bk128": dict(shrink_block_k=128),
    "bk64": dict(shrink_block_k=64),  # session 20: 64-deep K steps, as many stages as fit (more bytes in flight)
    # the block shrink's extra units (session 14) at every width / at none
    "xu": dict(shrink_extra_units=True),
    "noxu": dict(shrink_extra_units=False),
    "st2": dict(shrink_stages=2),
    "st4": dict(shrink_stages=4),
    # prefill (persistent) expand knobs
    "ss2": dict(expand_stream_stages=2),
    "ss3": dict(expand_stream_stages=3),
    "ss5": dict(expand_stream_stages=5),
    "ss6": dict(expand_stream_stages=6),
    "pbn128ss6": dict(expand_block_n=128, expand_stream_stages=6),
    "pbn128": dict(expand_block_n=128),
    # session 17: the persistent expand on two (three) CTAs per SM, its tiles in flight halved to fit
    "c264": dict(expand_ctas=264, expand_block_n=128),
    "c264ss2": dict(expand_ctas=264, expand_block_n=128, expand_stream_stages=2),
    "c264bn64": dict(expand_ctas=264, expand_block_n=64, expand_stream_stages=3),
    "c396ss2": dict(expand_ctas=396, expand_block_n=128, expand_stream_stages=2),
    "c396bn64ss4": dict(expand_ctas=396, expand_block_n=64, expand_stream_stages=4),
    "c264bn64ss4": dict(expand_ctas=264, expand_block_n=64, expand_stream_stages=4),
    "c264bn64ss6": dict(expand_ctas=264, expand_block_n=64, expand_stream_stages=6),
    # session 18: the rank-64 stacked expands' plan before shared memory was counted as Mosaic allocates it
    "c132bn128ss4": dict(expand_ctas=132, expand_block_n=128, expand_stream_stages=4),
    # session 17: the K-split block shrink (down projection) with more splits, and on two CTAs per SM
    "ks4st4": dict(shrink_ksplit=4, shrink_stages=4),
    "ks7st4": dict(shrink_ksplit=7, shrink_stages=4),
    "ks8st4": dict(shrink_ksplit=8, shrink_stages=4),
    "ks16st4": dict(shrink_ksplit=16, shrink_stages=4),
    "ks2st3": dict(shrink_ksplit=2, shrink_stages=3),
    "ks4st3": dict(shrink_ksplit=4, shrink_stages=3),
    "ks7": dict(shrink_ksplit=7),
    # session 18: the block shrink split in K where its blocks do not fill the SMs (mixed: 112 blocks), and
    # (noxu) the rank-64 down projection (16384-token bucket: its extra units run in a third wave) without them
    "ks2st4": dict(shrink_ksplit=2, shrink_stages=4),
    "tile": dict(expand_persistent=False),  # one CTA per tile
    "rdd": dict(expand_reduce_add=True),  # one CTA per tile, TMA reduce-add into base
}
