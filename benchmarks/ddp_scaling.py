"""DDP scaling of ALPNet training steps: steps/s with 1 process and with 2 gloo ranks on the CPU,
and on a GPU machine 1 GPU against all of its GPUs (NCCL/RCCL). Ratio: episodes per second of
the distributed run over the single process (each rank trains one episode per step, so N ranks
at the same steps/s give N x the episodes). Target on the CPU: >= 1.5x with 2 ranks on 2 free
cores (this machine's cores are shared, so expect less while others compute).

Each measurement runs ``util.training.train_step`` (forward, weighted cross-entropy + alignment
loss, backward with DDP's gradient all-reduce, SGD step) in fresh spawned processes, after
warm-up steps; the single process uses all cores (or one GPU), the ranks split them (the single
process is also measured with one thread: the ratio uses the faster of the two). The 1-process
and 2-rank runs alternate (1, 2, 1, 2, ... in full mode).

Sizes: ResNet-18 (``dlfcn_res18``) on 128 x 128 slices on the CPU (quick mode: 64 x 64, one
warm-up and one timed step), ResNet-101 on 256 x 256 on GPUs; 1-way 1-shot episodes whose
support and query are an ``hw/2`` x ``hw/2`` bright square on uniform noise, rank r's episode
its own (noise seed r, the square in the top-left corner for even r, bottom-right for odd r).

Agreement: the weights after the 2-rank run must equal (per-tensor sums within a float
tolerance) those of one process that, at every step, backpropagates both ranks' episodes and
averages their gradients before the SGD step, which is what DDP's all-reduce must amount to.
With DDP removed (each rank stepping alone) the ranks' weights are those of their own episode
and the check fails.

``python -m benchmarks.ddp_scaling [--quick] [--rounds N]``
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks.common import bench_main, free_port, row, sync

TARGET = 1.5
CPU_MODEL, GPU_MODEL = "dlfcn_res18", "dlfcn_res101"


def _episode(hw: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One synthetic 1-way 1-shot episode in the trainer's batch layout (B = 1): support and
    query are ``hw`` x ``hw`` uniform noise (different draws of ``seed``) with a bright ``hw/2`` x
    ``hw/2`` square organ, top-left for an even seed, bottom-right for an odd one (so that local
    prototypes exist and two ranks' episodes differ)."""
    g = torch.Generator().manual_seed(seed)
    imgs, masks = [], []
    size = hw // 2
    at = slice(0, size) if seed % 2 == 0 else slice(hw - size, hw)
    for _ in range(2):
        img = torch.rand(1, 3, hw, hw, generator=g)
        mask = torch.zeros(1, hw, hw)
        mask[:, at, at] = 1.0
        img[:, :, at, at] += 1.0
        imgs.append(img.to(device))
        masks.append(mask.to(device))
    return {"support_images": [[imgs[0]]],
            "support_mask": [[{"fg_mask": masks[0], "bg_mask": 1.0 - masks[0]}]],
            "query_images": [imgs[1]], "query_labels": [masks[1].long()], "index": seed}


def _averaged_step(model, episodes, opt, sched, crit, device) -> None:
    """The reference of DDP: one SGD step on the mean of the episodes' gradients (each episode
    backpropagated alone, as on its own rank)."""
    from util.training import episode_inputs, loss

    opt.zero_grad(set_to_none=True)
    for episode in episodes:
        supp, fg, bg, qry, labels = episode_inputs(episode, device)
        out = model(supp, fg, bg, qry, isval=False, val_wsize=None)
        total, _, _ = loss(out[0], labels, out[1], crit)
        (total / len(episodes)).backward()
    opt.step()
    sched.step()


def _worker(rank: int, world: int, port: int, device_kind: str, threads: int, modelname: str, hw: int,
            warmup: int, steps: int, results: Any, average_over: int = 0) -> None:
    """One process of a measurement: its steps/s after ``warmup`` steps (rank 0 reports).

    ``average_over`` > 0 (one process): the reference run, each step on the averaged gradients
    of the episodes of ranks 0 .. average_over - 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from models.builder import build_model
    from util.distributed import barrier, cleanup, init_distributed, wrap_ddp
    from util.training import build_criterion, build_optimizer, build_scheduler, train_step
    try:
        info = init_distributed(0, force_cpu=device_kind == "cpu")
        cfg = {"model": {"align": True, "init_weights": "random", "which_model": modelname,
                         "cls_name": "grid_proto", "proto_grid_size": 8, "feature_hw": [32, 32],
                         "use_coco_init": False, "reload_model_path": None},
               "optim": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
               "lr_milestones": [1000], "lr_step_gamma": 0.95}
        torch.manual_seed(0)
        model = build_model(cfg["model"]).to(info.device)
        model.train()
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg)
        net = wrap_ddp(model, info)
        crit = build_criterion(use_wce=True, ignore_label=255, device=info.device)
        episode = _episode(hw, info.device, seed=rank)    # each rank its own
        refs = [_episode(hw, info.device, seed=r) for r in range(average_over)]

        def step() -> None:
            if refs:
                _averaged_step(net, refs, opt, sched, crit, info.device)
            else:
                res = train_step(net, episode, opt, sched, criterion=crit, device=info.device)
                if res["skipped"]:
                    raise RuntimeError("a step was skipped (empty prototype): the check needs every step")

        for _ in range(warmup):
            step()
        sync(info.device)
        barrier()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(info.device)
        barrier()
        elapsed = time.perf_counter() - start
        if rank == 0:
            results.put(("ok", (steps / elapsed, fingerprint(model))))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", f"rank {rank}: {type(err).__name__}: {err}"))
        raise
    finally:
        cleanup()


def fingerprint(model: torch.nn.Module) -> list[float]:
    """Per parameter tensor: its sum and the sum of its absolute values (float64), in order."""
    out = []
    for p in model.parameters():
        d = p.detach().double().cpu()
        out += [float(d.sum()), float(d.abs().sum())]
    return out


def same_weights(a: list[float], b: list[float], rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Fingerprints equal up to float reordering (different thread counts sum differently)."""
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=rtol, abs_tol=atol) for x, y in zip(a, b))


def measure(world: int, device_kind: str, modelname: str, hw: int, warmup: int, steps: int,
            timeout: float = 900.0, start_method: str = "spawn", threads: int | None = None,
            average_over: int = 0) -> tuple[float, list[float]]:
    """Steps per second of ``world`` processes (1: plain single process, no DDP), each with
    ``threads`` intra-op threads (default: the cores shared out, at most 4 beside a GPU), and
    the :func:`fingerprint` of rank 0's weights after the run.

    Spawned processes: CUDA-safe, and no OpenMP state inherited from the parent.
    """
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    cores = os.cpu_count() or 1
    if threads is None:
        threads = max(1, cores // world) if device_kind == "cpu" else max(1, min(4, cores // world))
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, device_kind, threads, modelname, hw,
                                               warmup, steps, results, average_over))
             for r in range(world)]
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
    return float(value[0]), value[1]


def run(quick: bool = False, rounds: int | None = None) -> dict:
    hw, warmup, steps = (64, 1, 1) if quick else (128, 3, 10)
    # always spawn: a forked child of a process that already ran OpenMP kernels can hang in
    # its first convolution (seen here in the test suite)
    kw = {"start_method": "spawn"}
    ones, ones_1t, twos = [], [], []
    for _ in range(rounds or (1 if quick else 2)):              # alternating: 1, 2, 1, 2, ...
        if not quick:
            # a single process with all cores' threads: the usual way to run one process
            ones.append(measure(1, "cpu", CPU_MODEL, hw, warmup, steps, **kw)[0])
        # and with one thread, as each rank: on a shared machine threads of one process wait for
        # each other while separate processes each get their share
        ones_1t.append(measure(1, "cpu", CPU_MODEL, hw, warmup, steps, threads=1, **kw)[0])
        two, fp_two = measure(2, "cpu", CPU_MODEL, hw, warmup, steps, **kw)
        twos.append(two)
    # the reference, one thread as each rank (the same thread count sums in the same order:
    # 2 threads against 1 differ by more than float noise after 13 steps)
    fp_ref = measure(1, "cpu", CPU_MODEL, hw, warmup, steps, threads=1, average_over=2, **kw)[1]
    agree = same_weights(fp_ref, fp_two)
    one_1t, two = statistics.median(ones_1t), statistics.median(twos)
    one = statistics.median(ones) if ones else one_1t
    ratio = 2 * two / max(one, one_1t)
    cores = os.cpu_count() or 1
    details = (f"CPU {cores} cores, {CPU_MODEL} {hw}x{hw}, {steps} timed steps after {warmup}: "
               + ("" if quick else f"1 process {one:.2f} steps/s ({cores} threads), ")
               + f"1 process {one_1t:.2f} steps/s (1 thread)"
               + f"; 2 gloo ranks {two:.2f} steps/s ({2 * two:.2f} episodes/s); medians of {len(twos)} round(s)")
    if torch.cuda.is_available() and not quick:
        n = torch.cuda.device_count()
        g1, _ = measure(1, "cuda", GPU_MODEL, 256, 5, 30)
        details += f"; GPU {torch.cuda.get_device_name(0)}, {GPU_MODEL} 256x256: 1 GPU {g1:.2f} steps/s"
        if n > 1:
            gn, fp_gn = measure(n, "cuda", GPU_MODEL, 256, 5, 30)
            fp_gref = measure(1, "cuda", GPU_MODEL, 256, 5, 30, average_over=n)[1]
            agree = agree and same_weights(fp_gref, fp_gn, rtol=1e-3, atol=1e-4)
            details += f", {n} GPUs {gn:.2f} steps/s ({n * gn / g1:.2f}x episodes/s)"
    return row("ddp_scaling", "training episodes/s, 2 gloo ranks vs 1 process (CPU)", ratio,
               f">= {TARGET:g}x on 2 free cores", agree,
               "weights after the run: 2 ranks (an episode each) = 1 process averaging both episodes' "
               f"gradients{'' if agree else ' - DIFFER'}", details)


def main(argv: list[str] | None = None) -> int:
    return bench_main("ddp_scaling", __doc__.split("\n\n")[0], run, argv,
                      quick_help="64 x 64, one timed step (smoke test)", rounds_default=2)


if __name__ == "__main__":
    sys.exit(main())
