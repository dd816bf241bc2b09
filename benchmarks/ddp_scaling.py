"""DDP scaling of ALPNet training steps: steps/s with 1 process and with 2 gloo ranks on the CPU,
and on a GPU machine 1 GPU against all of its GPUs (NCCL/RCCL). Ratio: episodes per second of
the distributed run over the single process (each rank trains one episode per step, so N ranks
at the same steps/s give N x the episodes). Target on the CPU: >= 1.5x with 2 ranks on 2 free
cores (this machine's cores are shared, so expect less while others compute).

Each measurement runs ``util.trainer.train_step`` (forward, weighted cross-entropy + alignment
loss, backward with DDP's gradient all-reduce, SGD step) on synthetic episodes, in fresh
spawned processes, after warm-up steps; the single process uses all cores (or one GPU), the
ranks split them (the single process is also measured with one thread: the ratio uses the
faster of the two). ``python -m benchmarks.ddp_scaling [--quick]``
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import time
from typing import Any

import torch

TARGET = 1.5
CPU_MODEL, GPU_MODEL = "dlfcn_res18", "dlfcn_res101"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _episode(hw: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One synthetic 1-way 1-shot episode in the trainer's batch layout (B = 1): a bright square
    organ on noise covering the top-left pooling cells (so that local prototypes exist), support
    and query of different sizes."""
    g = torch.Generator().manual_seed(seed)
    imgs, masks = [], []
    for size in (hw // 2, hw // 2):
        img = torch.rand(1, 3, hw, hw, generator=g)
        mask = torch.zeros(1, hw, hw)
        mask[:, :size, :size] = 1.0
        img[:, :, :size, :size] += 1.0
        imgs.append(img.to(device))
        masks.append(mask.to(device))
    return {"support_images": [[imgs[0]]],
            "support_mask": [[{"fg_mask": masks[0], "bg_mask": 1.0 - masks[0]}]],
            "query_images": [imgs[1]], "query_labels": [masks[1].long()], "index": seed}


def _worker(rank: int, world: int, port: int, device_kind: str, threads: int, modelname: str, hw: int,
            warmup: int, steps: int, results: Any) -> None:
    """One process of a measurement: its steps/s after ``warmup`` steps (rank 0 reports)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from util.distributed import barrier, cleanup, init_distributed, wrap_ddp
    from util.trainer import build_criterion, build_model, build_optimizer, build_scheduler, train_step
    try:
        info = init_distributed(0, force_cpu=device_kind == "cpu")
        cfg = {"model": {"align": True, "init_weights": "random", "which_model": modelname,
                         "cls_name": "grid_proto", "proto_grid_size": 8, "feature_hw": [32, 32],
                         "use_coco_init": False, "reload_model_path": None},
               "optim": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
               "lr_milestones": [1000], "lr_step_gamma": 0.95}
        torch.manual_seed(0)
        model = build_model(cfg).to(info.device)
        model.train()
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg)
        net = wrap_ddp(model, info)
        crit = build_criterion(use_wce=True, ignore_label=255, device=info.device)
        episode = _episode(hw, info.device, seed=rank)

        def step() -> None:
            train_step(net, episode, opt, sched, criterion=crit, device=info.device)

        for _ in range(warmup):
            step()
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        barrier()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        barrier()
        elapsed = time.perf_counter() - start
        if rank == 0:
            results.put(("ok", steps / elapsed))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", f"rank {rank}: {type(err).__name__}: {err}"))
        raise
    finally:
        cleanup()


def measure(world: int, device_kind: str, modelname: str, hw: int, warmup: int, steps: int,
            timeout: float = 900.0, start_method: str = "spawn", threads: int | None = None) -> float:
    """Steps per second of ``world`` processes (1: plain single process, no DDP), each with
    ``threads`` intra-op threads (default: the cores shared out, at most 4 beside a GPU).

    Spawned processes: CUDA-safe, and no OpenMP state inherited from the parent.
    """
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    cores = os.cpu_count() or 1
    if threads is None:
        threads = max(1, cores // world) if device_kind == "cpu" else max(1, min(4, cores // world))
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, device_kind, threads, modelname, hw,
                                               warmup, steps, results)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        status, value = results.get(timeout=timeout)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    if status != "ok":
        raise RuntimeError(f"benchmarks.ddp_scaling ({world} x {device_kind}): {value}")
    return float(value)


def run(quick: bool = False) -> dict:
    hw, warmup, steps = (64, 1, 1) if quick else (128, 3, 10)
    # always spawn: a forked child of a process that already ran OpenMP kernels can hang in
    # its first convolution (seen here in the test suite)
    start = "spawn"
    one = measure(1, "cpu", CPU_MODEL, hw, warmup, steps, start_method=start)
    # a single process with one thread too: on a shared machine, threads of one process wait
    # for each other while separate processes each get their share; take the better baseline
    one_1t = one if quick else measure(1, "cpu", CPU_MODEL, hw, warmup, steps, start_method=start, threads=1)
    two = measure(2, "cpu", CPU_MODEL, hw, warmup, steps, start_method=start)
    ratio = 2 * two / max(one, one_1t)
    cores = os.cpu_count() or 1
    details = (f"CPU {cores} cores, {CPU_MODEL} {hw}x{hw}: 1 process {one:.2f} steps/s ({cores} threads)"
               + ("" if quick else f", {one_1t:.2f} steps/s (1 thread)")
               + f"; 2 gloo ranks {two:.2f} steps/s ({2 * two:.2f} episodes/s)")
    if torch.cuda.is_available() and not quick:
        n = torch.cuda.device_count()
        g1 = measure(1, "cuda", GPU_MODEL, 256, 5, 30)
        details += f"; GPU {torch.cuda.get_device_name(0)}, {GPU_MODEL} 256x256: 1 GPU {g1:.2f} steps/s"
        if n > 1:
            gn = measure(n, "cuda", GPU_MODEL, 256, 5, 30)
            details += f", {n} GPUs {gn:.2f} steps/s ({n * gn / g1:.2f}x episodes/s)"
    return {"name": "ddp_scaling", "what": "training episodes/s, 2 gloo ranks vs 1 process (CPU)",
            "ratio": ratio, "target": f">= {TARGET:g}x on 2 free cores", "details": details}


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv[1:])
    print(f"{res['name']}: {res['ratio']:.2f}x (target {res['target']}); {res['details']}")
