#!/bin/bash
# One-time setup on a login node (it has internet; compute nodes do not): the modules of
# examples/frontier/env.sh, a Python venv with the ROCm build of PyTorch (CUDA build with
# CLUSTER=nvidia), the requirements, and the pretrained weights cached where the jobs look.
#
#   ALPNET_ENV=/lustre/orion/<proj>/proj-shared/$USER/alpnet-env examples/frontier/install_env.sh
#
# Variables: ALPNET_ENV (required: where the venv goes; Lustre starts faster than NFS home),
# CLUSTER (frontier), ROCM_VERSION (5.7.1), TORCH_VERSION (2.2.2), TORCHVISION_VERSION (the
# release matching TORCH_VERSION: 0.17.2),
# TORCH_INDEX (the wheel index: https://download.pytorch.org/whl/rocm5.7 on Frontier, PyPI's
# default CUDA wheels on NVIDIA), TORCH_HOME (weights cache, default $ALPNET_ENV/torch-home),
# FETCH_ARGS (arguments of python -m util.fetch_weights), DRY_RUN=1 (print the steps only).
# NumPy: torch wheels older than 2.3 are built against NumPy 1.x and fail with NumPy 2, so NumPy
# is pinned below 2 for them (a newer TORCH_VERSION, e.g. a ROCm 6 wheel, lifts the pin).
# Optional steps:
#   INSTALL_RCCL_PLUGIN=1  build the aws-ofi-rccl plugin (RCCL over Slingshot's libfabric instead
#                          of TCP sockets between nodes) into $ALPNET_ENV/aws-ofi-rccl, where the
#                          jobs find it; RCCL_PLUGIN_REPO, RCCL_PLUGIN_REF (a tag/branch),
#                          LIBFABRIC_DIR (/opt/cray/libfabric/1.15.2.0), ROCM_PATH change it
#   PACK_ENV=1             write $ALPNET_ENV.tar.gz, which jobs with STAGE_ENV=1 copy to each
#                          node's NVMe with sbcast (OLCF's advice for start-up time at scale)
set -euo pipefail
: "${ALPNET_ENV:?set ALPNET_ENV to the folder of the new Python environment}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=env.sh
source examples/frontier/env.sh

TORCH_VERSION="${TORCH_VERSION:-2.2.2}"
torch_major="${TORCH_VERSION%%.*}"
torch_minor="${TORCH_VERSION#*.}"; torch_minor="${torch_minor%%.*}"
# torchvision of the same release: torch 2.m.p <-> torchvision 0.(m+15).p (2.2.2: 0.17.2, 2.5.1: 0.20.1)
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.$((torch_minor + 15)).${TORCH_VERSION##*.}}"
case "$CLUSTER" in
    frontier) TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/rocm${ROCM_VERSION%.*}}" ;;
    *) TORCH_INDEX="${TORCH_INDEX:-}" ;;
esac
export TORCH_HOME="${TORCH_HOME:-$ALPNET_ENV/torch-home}"

step() {  # print a step (quoted as a shell reads it back), run it unless DRY_RUN=1
    local line
    line="$(printf '%q ' "$@")"
    echo "+ ${line% }"
    [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}

NUMPY_PIN=""
if (( torch_major < 2 || (torch_major == 2 && torch_minor < 3) )); then
    NUMPY_PIN="numpy<2"        # torch < 2.3 wheels are built against NumPy 1.x
fi

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
if [[ -n "$NUMPY_PIN" ]]; then
    step python3 -m pip install "$NUMPY_PIN"      # first, from PyPI: torchvision then keeps it
fi
step python3 -m pip install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
step python3 -m pip install -r requirements.txt ${NUMPY_PIN:+"$NUMPY_PIN"}
read -r -a fetch_args <<< "${FETCH_ARGS:-}"
step python3 -m util.fetch_weights "${fetch_args[@]}"
step python3 -c 'import numpy, torch; print("torch", torch.__version__, "numpy", numpy.__version__, "HIP", torch.version.hip, "CUDA", torch.version.cuda)'
if [[ "${INSTALL_RCCL_PLUGIN:-0}" == 1 ]]; then
    plugin_src="$ALPNET_ENV/src/aws-ofi-rccl"
    rocm="${ROCM_PATH:-/opt/rocm-$ROCM_VERSION}"
    libfabric="${LIBFABRIC_DIR:-/opt/cray/libfabric/1.15.2.0}"
    step git clone --depth 1 ${RCCL_PLUGIN_REF:+--branch "$RCCL_PLUGIN_REF"} \
        "${RCCL_PLUGIN_REPO:-https://github.com/ROCm/aws-ofi-rccl}" "$plugin_src"
    step bash -c "cd '$plugin_src' && ./autogen.sh && CC=hipcc CFLAGS=-I$rocm/include ./configure \
--with-libfabric=$libfabric --with-hip=$rocm --with-rccl=$rocm --prefix=$ALPNET_ENV/aws-ofi-rccl && make -j 8 install"
    echo "aws-ofi-rccl in $ALPNET_ENV/aws-ofi-rccl: jobs with this ALPNET_ENV put it on LD_LIBRARY_PATH"
fi
if [[ "${PACK_ENV:-0}" == 1 ]]; then
    step tar -czf "$ALPNET_ENV.tar.gz" -C "$(dirname "$ALPNET_ENV")" "$(basename "$ALPNET_ENV")"
fi
echo "done: jobs use it with ALPNET_ENV=$ALPNET_ENV (weights in TORCH_HOME=$TORCH_HOME)"
