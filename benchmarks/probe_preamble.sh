# Sourced by the device probes since session 38 (after `set -u`): prints the card's name (as $GPU), keeps JAX from
# taking 75% of the GPU's memory beside torch, points the pallas backend at the lowered kernels the call carries
# (.pallas-cache), and defines `want STEP`: whether STEP is among $STEPS (the probe's DEFAULT_STEPS if unset).
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
want() { [[ " ${STEPS:-${DEFAULT_STEPS:-}} " == *" $1 "* ]]; }
