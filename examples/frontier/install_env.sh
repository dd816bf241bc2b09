#!/bin/bash
# One-time setup on a login node (it has internet; compute nodes do not): the modules of
# examples/frontier/env.sh, a Python venv with the ROCm build of PyTorch (CUDA build with
# CLUSTER=nvidia), the requirements, and the pretrained weights cached where the jobs look.
#
#   ALPNET_ENV=/lustre/orion/<proj>/proj-shared/$USER/alpnet-env examples/frontier/install_env.sh
#
# Variables: ALPNET_ENV (required: where the venv goes; Lustre starts faster than NFS home),
# CLUSTER (frontier), ROCM_VERSION (5.7.1), TORCH_VERSION (2.2.2), TORCHVISION_VERSION (0.17.2),
# TORCH_INDEX (the wheel index: https://download.pytorch.org/whl/rocm5.7 on Frontier, PyPI's
# default CUDA wheels on NVIDIA), TORCH_HOME (weights cache, default $ALPNET_ENV/torch-home),
# FETCH_ARGS (arguments of python -m util.fetch_weights), DRY_RUN=1 (print the steps only).
set -euo pipefail
: "${ALPNET_ENV:?set ALPNET_ENV to the folder of the new Python environment}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=env.sh
source examples/frontier/env.sh

TORCH_VERSION="${TORCH_VERSION:-2.2.2}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.17.2}"
case "$CLUSTER" in
    frontier) TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/rocm${ROCM_VERSION%.*}}" ;;
    *) TORCH_INDEX="${TORCH_INDEX:-}" ;;
esac
export TORCH_HOME="${TORCH_HOME:-$ALPNET_ENV/torch-home}"

step() {  # print a step, run it unless DRY_RUN=1
    echo "+ $*"
    [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "+ module load $([[ $CLUSTER == frontier ]] && echo "$FRONTIER_MODULES" || echo "$NVIDIA_MODULES")"
else
    alpnet_load_modules
fi
step python3 -m venv "$ALPNET_ENV"
if [[ "${DRY_RUN:-0}" != 1 ]]; then
    # shellcheck disable=SC1091
    source "$ALPNET_ENV/bin/activate"
fi
step python3 -m pip install --upgrade pip
step python3 -m pip install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
step python3 -m pip install -r requirements.txt
read -r -a fetch_args <<< "${FETCH_ARGS:-}"
step python3 -m util.fetch_weights "${fetch_args[@]}"
step python3 -c 'import torch; print("torch", torch.__version__, "HIP", torch.version.hip, "CUDA", torch.version.cuda)'
echo "done: jobs use it with ALPNET_ENV=$ALPNET_ENV (weights in TORCH_HOME=$TORCH_HOME)"
