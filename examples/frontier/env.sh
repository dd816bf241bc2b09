# shellcheck shell=bash
# The environment of SSL-ALPNet's Slurm jobs and of install_env.sh (sourced, never run).
#
# CLUSTER picks the machine type:
#   frontier (default)  OLCF Frontier: Cray/ROCm modules, 8 GCDs per node, RCCL over Slingshot
#                       (hsn0), MIOpen's user database in node-local /tmp
#   nvidia              a generic NVIDIA Slurm cluster: NVIDIA_MODULES, GPUS_PER_NODE (4), NCCL
#   cpu                 no modules, no GPU: ranks on the CPU with gloo (tests, debugging)
# Other variables (all optional):
#   ALPNET_ENV          the Python environment made by install_env.sh (a venv: bin/activate);
#                       empty: use the python3 already on PATH (e.g. your own conda env)
#   ROCM_VERSION        5.7.1          FRONTIER_MODULES  the module list (default below)
#   NVIDIA_MODULES      e.g. "cuda/12.4 python/3.11"   (nothing loaded by default)
#   GPUS_PER_NODE       ranks per node: 8 (frontier), 4 (nvidia), 1 (cpu)
#   SRUN_GPU_OPTS       srun options binding one GPU to each task (defaults below)
#   RCCL_PLUGIN_DIR     an aws-ofi-rccl build (its lib/ goes first on LD_LIBRARY_PATH)
#   TORCH_HOME          where the pretrained weights are cached (python -m util.fetch_weights)
#   NODE_LOCAL_TMP      node-local scratch for the MIOpen database (/tmp)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "examples/frontier/env.sh is sourced by install_env.sh and the sbatch scripts" >&2
    exit 2
fi

CLUSTER="${CLUSTER:-frontier}"
ROCM_VERSION="${ROCM_VERSION:-5.7.1}"
# The fork's README modules (cray-python, PrgEnv-gnu, amd-mixed, craype-accel-amd-gfx90a), with
# the ROCm release of the PyTorch wheel (torch >= 2.1 has no ROCm 5.4 wheels).
FRONTIER_MODULES="${FRONTIER_MODULES:-cray-python PrgEnv-gnu amd-mixed/${ROCM_VERSION} craype-accel-amd-gfx90a}"
NVIDIA_MODULES="${NVIDIA_MODULES:-}"

alpnet_load_modules() {  # module load the CLUSTER's list
    local list="" m
    case "$CLUSTER" in
        frontier) list="$FRONTIER_MODULES" ;;
        nvidia) list="$NVIDIA_MODULES" ;;
        cpu) return 0 ;;
        *) echo "CLUSTER must be frontier, nvidia or cpu, got '$CLUSTER'" >&2; return 2 ;;
    esac
    [[ -n "$list" ]] || return 0
    if ! type module >/dev/null 2>&1 && [[ -f /etc/profile ]]; then
        # shellcheck disable=SC1091
        source /etc/profile            # batch shells started with --export=NONE lack `module`
    fi
    for m in $list; do
        module load "$m" || { echo "module load $m failed (CLUSTER=$CLUSTER; set FRONTIER_MODULES/NVIDIA_MODULES)" >&2; return 2; }
    done
}

alpnet_activate() {  # the Python environment of install_env.sh, if ALPNET_ENV names one
    [[ -n "${ALPNET_ENV:-}" ]] || return 0
    if [[ ! -f "$ALPNET_ENV/bin/activate" ]]; then
        echo "ALPNET_ENV=$ALPNET_ENV has no bin/activate: run examples/frontier/install_env.sh first" >&2
        return 2
    fi
    # shellcheck disable=SC1091
    source "$ALPNET_ENV/bin/activate"
    export TORCH_HOME="${TORCH_HOME:-$ALPNET_ENV/torch-home}"
}

alpnet_gpu_env() {  # ranks per node, srun GPU binding, collective-communication variables
    case "$CLUSTER" in
        frontier)
            GPUS_PER_NODE="${GPUS_PER_NODE:-8}"          # 4 MI250X = 8 GCDs, one rank each
            # one GCD per task, the closest to its cores; 7 cores per task (low-noise mode: 56)
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:---gpus-per-task=1 --gpu-bind=closest -c 7}"
            # OLCF "PyTorch on Frontier": RCCL over the Slingshot interface, GPU RDMA, cross-NIC rings
            export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-hsn0}"
            export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-3}"
            export NCCL_CROSS_NIC="${NCCL_CROSS_NIC:-1}"
            # libfabric's memory-registration cache monitor OLCF advises for RCCL/MPI on Slingshot
            export FI_MR_CACHE_MONITOR="${FI_MR_CACHE_MONITOR:-memhooks}"
            if [[ -n "${RCCL_PLUGIN_DIR:-}" ]]; then
                export LD_LIBRARY_PATH="$RCCL_PLUGIN_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            fi
            ;;
        nvidia)
            GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:---gpus-per-task=1}"
            ;;
        cpu)
            GPUS_PER_NODE="${GPUS_PER_NODE:-1}"
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:-}"
            ;;
        *) echo "CLUSTER must be frontier, nvidia or cpu, got '$CLUSTER'" >&2; return 2 ;;
    esac
    export GPUS_PER_NODE SRUN_GPU_OPTS
}

alpnet_node_caches() {  # $1 nodes: MIOpen's database in node-local /tmp, made once per node
    [[ "$CLUSTER" == frontier ]] || return 0
    # Per job and per node: concurrent jobs and other nodes never share (or lock) the database.
    export MIOPEN_USER_DB_PATH="${NODE_LOCAL_TMP:-/tmp}/miopen-${USER:-alpnet}-${SLURM_JOB_ID:-0}"
    export MIOPEN_CUSTOM_CACHE_DIR="$MIOPEN_USER_DB_PATH"
    srun -N "$1" --ntasks-per-node=1 -n "$1" \
        bash -c 'rm -rf "$MIOPEN_USER_DB_PATH" 2>/dev/null; mkdir -p "$MIOPEN_USER_DB_PATH"'
    # (rm may race with itself only where "nodes" share one /tmp, as in the local stand-in test)
}

alpnet_setup() {  # everything a job needs before its srun
    alpnet_load_modules && alpnet_activate && alpnet_gpu_env
}
