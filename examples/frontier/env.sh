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
#   CPUS_PER_TASK       cores per rank (srun -c): 7 on Frontier (56 usable cores / 8 GCDs), else
#                       the job's SLURM_CPUS_ON_NODE / GPUS_PER_NODE (at least 1)
#   RCCL_PLUGIN_DIR     an aws-ofi-rccl build (its lib/ goes first on LD_LIBRARY_PATH); default
#                       $ALPNET_ENV/aws-ofi-rccl when install_env.sh built it there
#   TORCH_HOME          where the pretrained weights are cached (python -m util.fetch_weights)
#   NODE_LOCAL_TMP      node-local scratch for the MIOpen database (/tmp)
#   MIOPEN_DB_STORE     persistent copy of MIOpen's database (default <LOGDIR>/miopen-db, on
#                       Lustre): seeded into each node's database at job start, saved back at
#                       the end, so a requeued job does not tune the convolutions again
#   STAGE_ENV=1         copy the environment to node-local NVMe with sbcast at job start
#                       (needs `sbatch -C nvme` and the archive of install_env.sh PACK_ENV=1);
#                       NVME_DIR (/mnt/bb/$USER) is where it goes
#   PROFILE_SCRIPT      sourced (set -u off) when the batch shell lacks `module` (/etc/profile)
#   DRY_RUN=1           print the job's own steps (database copies, sbcast, srun) without running
#                       them; the launchers then print the training commands

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

alpnet_step() {  # print a step of the job (stderr), run it unless DRY_RUN=1
    echo "+ $*" >&2
    [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}

alpnet_nounset_call() {  # "$@" with set -u off (Lmod, /etc/profile and activate read unset variables)
    local had_u=0 status=0
    [[ $- == *u* ]] && had_u=1
    set +u
    "$@" || status=$?
    (( had_u )) && set -u
    return "$status"
}

_alpnet_source() {  # source a file in the caller's shell (a function, for alpnet_nounset_call)
    # shellcheck disable=SC1090
    source "$1"
}

alpnet_load_modules() {  # module load the CLUSTER's list
    local list="" m profile="${PROFILE_SCRIPT:-/etc/profile}"
    case "$CLUSTER" in
        frontier) list="$FRONTIER_MODULES" ;;
        nvidia) list="$NVIDIA_MODULES" ;;
        cpu) return 0 ;;
        *) echo "error: CLUSTER must be frontier, nvidia or cpu, got '$CLUSTER': submit with --export=ALL,CLUSTER=<one of them>" >&2
           return 2 ;;
    esac
    [[ -n "$list" ]] || return 0
    if ! type module >/dev/null 2>&1 && [[ -f "$profile" ]]; then
        # batch shells started with --export=NONE lack `module`; SLES's profile reads unset variables
        alpnet_nounset_call _alpnet_source "$profile"
    fi
    for m in $list; do
        alpnet_nounset_call module load "$m" \
            || { echo "module load $m failed (CLUSTER=$CLUSTER; set FRONTIER_MODULES/NVIDIA_MODULES)" >&2; return 2; }
    done
}

alpnet_activate() {  # the Python environment of install_env.sh, if ALPNET_ENV names one
    [[ -n "${ALPNET_ENV:-}" ]] || return 0
    if [[ ! -f "$ALPNET_ENV/bin/activate" ]]; then
        echo "ALPNET_ENV=$ALPNET_ENV has no bin/activate: run examples/frontier/install_env.sh first" >&2
        return 2
    fi
    alpnet_nounset_call _alpnet_source "$ALPNET_ENV/bin/activate"
    export TORCH_HOME="${TORCH_HOME:-$ALPNET_ENV/torch-home}"
}

_alpnet_cpus_per_task() {  # $1: the default; else the node's allocated cores per rank
    local per=$(( ${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE} / GPUS_PER_NODE ))
    printf '%s' "${CPUS_PER_TASK:-${1:-$(( per > 0 ? per : 1 ))}}"
}

alpnet_gpu_env() {  # ranks per node, srun GPU and core binding, collective-communication variables
    case "$CLUSTER" in
        frontier)
            GPUS_PER_NODE="${GPUS_PER_NODE:-8}"          # 4 MI250X = 8 GCDs, one rank each
            # one GCD per task, the closest to its cores; 7 cores per task (low-noise mode: 56)
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:---gpus-per-task=1 --gpu-bind=closest -c $(_alpnet_cpus_per_task 7)}"
            # OLCF "PyTorch on Frontier": RCCL over the Slingshot interface, GPU RDMA, cross-NIC rings
            export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-hsn0}"
            export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-3}"
            export NCCL_CROSS_NIC="${NCCL_CROSS_NIC:-1}"
            # libfabric's memory-registration cache monitor OLCF advises for RCCL/MPI on Slingshot
            export FI_MR_CACHE_MONITOR="${FI_MR_CACHE_MONITOR:-memhooks}"
            # the loader workers fork after RCCL/libfabric opened the NIC: fork-safe CXI memory
            export CXI_FORK_SAFE="${CXI_FORK_SAFE:-1}"
            export CXI_FORK_SAFE_HP="${CXI_FORK_SAFE_HP:-1}"
            if [[ -z "${RCCL_PLUGIN_DIR:-}" && -n "${ALPNET_ENV:-}" && -d "$ALPNET_ENV/aws-ofi-rccl/lib" ]]; then
                RCCL_PLUGIN_DIR="$ALPNET_ENV/aws-ofi-rccl"  # built by install_env.sh INSTALL_RCCL_PLUGIN=1
            fi
            if [[ -n "${RCCL_PLUGIN_DIR:-}" ]]; then
                export LD_LIBRARY_PATH="$RCCL_PLUGIN_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            fi
            ;;
        nvidia)
            GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
            # cores for each rank and its loader workers (without -c all of them share one core)
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:---gpus-per-task=1 -c $(_alpnet_cpus_per_task)}"
            ;;
        cpu)
            GPUS_PER_NODE="${GPUS_PER_NODE:-1}"
            SRUN_GPU_OPTS="${SRUN_GPU_OPTS:--c $(_alpnet_cpus_per_task)}"
            ;;
        *) echo "error: CLUSTER must be frontier, nvidia or cpu, got '$CLUSTER': submit with --export=ALL,CLUSTER=<one of them>" >&2
           return 2 ;;
    esac
    export GPUS_PER_NODE SRUN_GPU_OPTS
}

alpnet_srun_cores() {  # the cores per rank SRUN_GPU_OPTS asks for (-c N, --cpus-per-task=N; 1 without)
    local opts=" ${SRUN_GPU_OPTS:-} " re='[[:space:]](-c|--cpus-per-task)[=[:space:]]*([0-9]+)'
    if [[ "$opts" =~ $re ]]; then printf '%s' "${BASH_REMATCH[2]}"; else printf '1'; fi
}

alpnet_ranks_text() {  # what the job runs per node, for the job's first line
    local cores
    cores="$(alpnet_srun_cores)"
    if [[ "$CLUSTER" == cpu ]]; then
        printf '%s rank(s) per node on CPUs (gloo), %s core(s) each' "$GPUS_PER_NODE" "$cores"
    else
        printf '%s GPU(s) per node, one rank each, %s core(s) per rank' "$GPUS_PER_NODE" "$cores"
    fi
}

alpnet_check_allocation() {  # before any srun: the job's CPUs hold GPUS_PER_NODE ranks x their cores
    # SLURM_CPUS_ON_NODE: the CPUs this job holds on its first node. A job that asked for no tasks
    # gets one CPU on a partition that shares nodes, and srun then fails with "More processors
    # requested than permitted"; say what to add instead.
    [[ -n "${SLURM_CPUS_ON_NODE:-}" && "${DRY_RUN:-0}" != 1 ]] || return 0
    local cores need
    cores="$(alpnet_srun_cores)"
    need=$(( GPUS_PER_NODE * cores ))
    (( SLURM_CPUS_ON_NODE >= need )) && return 0
    echo "error: the job holds $SLURM_CPUS_ON_NODE CPU(s) per node but $GPUS_PER_NODE rank(s) x $cores core(s) need $need:" \
         "submit with sbatch --ntasks-per-node=$GPUS_PER_NODE --cpus-per-task=$cores (or set GPUS_PER_NODE, CPUS_PER_TASK to fit;" \
         "examples/frontier/README.md, section 6)" >&2
    return 2
}

alpnet_master_port() {  # MASTER_PORT, else the one util/distributed.py derives from the job id
    printf '%s' "${MASTER_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 10000 ))}"
}

alpnet_rccl_plugin_check() {  # $1 nodes: warn when a multi-node Frontier job lacks aws-ofi-rccl
    [[ "$CLUSTER" == frontier ]] && (( $1 > 1 )) || return 0
    local dir
    local path="${LD_LIBRARY_PATH:-}"
    for dir in ${path//:/ }; do
        if compgen -G "$dir/librccl-net*.so" >/dev/null; then return 0; fi
    done
    echo "WARNING: $1 nodes without the aws-ofi-rccl plugin (no librccl-net*.so on LD_LIBRARY_PATH):" \
         "RCCL falls back to TCP sockets between nodes, much slower. Build it once with" \
         "INSTALL_RCCL_PLUGIN=1 examples/frontier/install_env.sh or set RCCL_PLUGIN_DIR." >&2
}

alpnet_node_caches() {  # $1 nodes: MIOpen's database on each node, seeded from MIOPEN_DB_STORE
    [[ "$CLUSTER" == frontier ]] || return 0
    # Per job and per node: concurrent jobs and other nodes never share (or lock) the database.
    export MIOPEN_USER_DB_PATH="${NODE_LOCAL_TMP:-/tmp}/miopen-${USER:-alpnet}-${SLURM_JOB_ID:-0}"
    export MIOPEN_CUSTOM_CACHE_DIR="$MIOPEN_USER_DB_PATH"
    local logdir="${LOGDIR:-runs}"
    [[ "$logdir" == /* ]] || logdir="$PWD/$logdir"
    export MIOPEN_DB_STORE="${MIOPEN_DB_STORE:-$logdir/miopen-db}"
    # Each task copies into its own temporary folder, then renames file by file: "nodes" that share
    # one /tmp (NODE_LOCAL_TMP on a shared file system, or the local stand-in test) never race.
    alpnet_step srun -N "$1" --ntasks-per-node=1 -n "$1" bash -c \
        'mkdir -p "$MIOPEN_USER_DB_PATH" && if [[ -d "$MIOPEN_DB_STORE" ]]; then tmp="$MIOPEN_USER_DB_PATH.seed-${SLURM_PROCID:-0}-$$" && mkdir -p "$tmp" && cp -a "$MIOPEN_DB_STORE/." "$tmp/" && for f in "$tmp"/* "$tmp"/.[!.]*; do [[ -e "$f" ]] && mv -f "$f" "$MIOPEN_USER_DB_PATH/"; done; rm -rf "$tmp"; fi'
}

alpnet_save_node_caches() {  # copy the first node's MIOpen database back to MIOPEN_DB_STORE
    [[ "$CLUSTER" == frontier && -n "${MIOPEN_USER_DB_PATH:-}" ]] || return 0
    # into a temporary folder beside the store, then file by file with rename (atomic on Lustre):
    # a concurrent array task never sees a half-written file
    alpnet_step srun -N 1 -n 1 --nodelist="$MASTER_ADDR" bash -c \
        'tmp="$MIOPEN_DB_STORE.tmp-$SLURM_JOB_ID" && mkdir -p "$MIOPEN_DB_STORE" "$tmp" && cp -a "$MIOPEN_USER_DB_PATH/." "$tmp/" && for f in "$tmp"/* "$tmp"/.[!.]*; do [[ -e "$f" ]] && mv -f "$f" "$MIOPEN_DB_STORE/"; done; rm -rf "$tmp"' \
        || echo "could not save MIOpen's database to $MIOPEN_DB_STORE (the next job tunes again)" >&2
}

alpnet_stage_env() {  # $1 nodes: STAGE_ENV=1 puts $ALPNET_ENV on node-local NVMe with sbcast
    [[ "${STAGE_ENV:-0}" == 1 ]] || return 0
    local archive="${ALPNET_ENV:?STAGE_ENV=1 needs ALPNET_ENV}.tar.gz" nvme="${NVME_DIR:-/mnt/bb/${USER:-alpnet}}"
    local staged="$nvme/$(basename "$ALPNET_ENV")"
    if [[ ! -f "$archive" && "${DRY_RUN:-0}" != 1 ]]; then
        echo "STAGE_ENV=1: $archive is missing: run PACK_ENV=1 examples/frontier/install_env.sh once" >&2
        return 2
    fi
    # OLCF: one read of the archive from Lustre, broadcast to every node's NVMe (sbatch -C nvme)
    alpnet_step sbcast -pf "$archive" "$nvme/$(basename "$archive")" || return 2
    alpnet_step srun -N "$1" --ntasks-per-node=1 -n "$1" tar -xzf "$nvme/$(basename "$archive")" -C "$nvme" || return 2
    # the venv's interpreter finds its packages from its own location: put the copy first
    export VIRTUAL_ENV="$staged" PATH="$staged/bin:$PATH"
    echo "environment staged on node-local NVMe: $staged" >&2
}

alpnet_setup() {  # everything a job needs before its srun
    alpnet_load_modules && alpnet_activate && alpnet_gpu_env
}

alpnet_job_nodes() {  # after alpnet_setup: NNODES, NTASKS, MASTER_ADDR/PORT, env staging, MIOpen caches
    NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
    NTASKS=$((NNODES * GPUS_PER_NODE))
    local node_names
    node_names="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"   # no pipe: `| head` breaks pipefail
    export MASTER_ADDR="${node_names%%$'\n'*}"                        # the first node hosts rank 0
    export MASTER_PORT="$(alpnet_master_port)"
    alpnet_stage_env "$NNODES"
    alpnet_rccl_plugin_check "$NNODES"
    alpnet_node_caches "$NNODES"
}

alpnet_ddp_python() {  # the PYTHON of a run on every GPU of the job; one rank dying ends the step
    printf '%s' "srun -N $NNODES -n $NTASKS --ntasks-per-node=$GPUS_PER_NODE --kill-on-bad-exit=1 $SRUN_GPU_OPTS python3 -u"
}
