#!/usr/bin/env bash
# Session 32, issue 17: the prefill / mixed shrink buckets (both ranks) re-tuned with the tuner's descriptor twins
# (ShrinkPlan.tma, 4a53ccf; every table and grid plan also timed with TMA loads), on whichever card comes (the
# table is that card's), starting from its shipped table; the compare before (shipped) and after (tuned) in the
# same call. On the H100 (s32t, plan_probe) the rank-64 QKV shrink's 128 x 64 tiles went 41.5 -> 36.8 us.
# Usage (device tool): bash benchmarks/probe_s32_tune_tma.sh [PREFIX]
set -u
RANKS=16,64 OPS=shrink1,shrink2,shrink3 MAXC=${MAXC:-80} BUDGET=${BUDGET:-200} bash benchmarks/probe_s30_tune_wide.sh ${1:-s32k}
