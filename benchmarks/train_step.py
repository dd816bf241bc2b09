"""One ALPNet training step (``util.training.train_step``: forward with the ALP head and the
alignment loss, weighted cross-entropy, backward, SGD, scheduler) against the backbone's own
forward + backward on the same two images (support + query), alternating in one process.
Target on the CPU: at most 1.25x (ResNet-101 encoder, 256 x 256, 1-way 1-shot, alignment on).
An untimed round of each first. Checked (the run fails otherwise): the images the step's encoder
received equal the backbone's two images (the same work), no step was skipped and every loss
is finite. The two paths compute different things, so no output is compared.

With a GPU (full mode): episodes per second at batch 1 in fp32 (the original's setting) against
the best batch size in bf16, same model; target at least 3x; peak GPU memory of each setting.

``python -m benchmarks.train_step [--quick]``
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from benchmarks.common import exit_code, print_row, row, sync
from util.training import build_criterion, build_optimizer, build_scheduler, train_step

__all__ = ["run", "make_episode_batch", "gpu_throughput", "TARGET", "GPU_TARGET"]

TARGET = 1.25           # target: one step at most 1.25x the backbone's forward + backward
GPU_TARGET = 3.0        # target: best bf16 batch at least 3x the batch-1 fp32 episodes/s
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
_last_losses: list[float] = []       # loss and align_loss of the latest timed step
OPTIM_CFG = {"optim": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
             "lr_milestones": [1000], "lr_step_gamma": 0.95}


def make_episode_batch(batch: int, size: int, seed: int = 0) -> dict:
    """A collated 1-way 1-shot batch: smooth random slices, a square superpixel-like mask in the
    support and the same square, shifted, as the query label (B x ... tensors)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 1, size // 16, size // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    fg = torch.zeros(batch, size, size)
    a, b = size // 3, size // 3 + size // 5
    fg[:, a:b, a:b] = 1.0
    shift = max(size // 32, 1)
    qry = torch.roll(img, shifts=(shift, shift), dims=(2, 3))
    qlab = torch.roll(fg, shifts=(shift, shift), dims=(1, 2)).long()
    return {"support_images": [[img.repeat(1, 3, 1, 1)]],
            "support_mask": [[{"fg_mask": fg, "bg_mask": 1.0 - fg}]],
            "query_images": [qry.repeat(1, 3, 1, 1)], "query_labels": [qlab],
            "index": torch.arange(batch)}


def _model(name: str, device: torch.device) -> torch.nn.Module:
    from models.grid_proto_fewshot import FewShotSeg
    torch.manual_seed(0)
    model = FewShotSeg(in_channels=3, cfg={"which_model": name, "init_weights": "random", "align": True})
    return model.to(device).train()


def _errors() -> tuple[type[BaseException], ...]:
    from util.training import episode_errors
    return episode_errors()


def _step_time(model, episode, opt, sch, crit, device, precision) -> tuple[float, bool]:
    sync(device)
    start = time.perf_counter()
    res = train_step(model, episode, opt, sch, criterion=crit, device=device, precision=precision,
                     skip_errors=_errors())
    sync(device)
    elapsed = time.perf_counter() - start
    _last_losses[:] = [res["loss"], res["align_loss"]]
    return elapsed, bool(res["skipped"])


def _backbone_time(model, imgs: torch.Tensor, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model.encoder(imgs.to(device)).float().mean().backward()
    sync(device)
    return time.perf_counter() - start


def gpu_throughput(name: str = "dlfcn_res101", size: int = 256, steps: int = 10,
                   warmup: int = 3) -> dict:
    """Episodes per second and peak memory: batch 1 fp32, then bf16 at ``GPU_BATCHES`` (until
    out of memory). Needs a GPU."""
    device = torch.device("cuda", torch.cuda.current_device())
    model = _model(name, device)
    opt = build_optimizer(model, OPTIM_CFG)
    sch = build_scheduler(opt, OPTIM_CFG)
    crit = build_criterion(use_wce=True, ignore_label=255, device=device)
    rows = []
    for precision, batch in [("fp32", 1)] + [("bf16", b) for b in GPU_BATCHES]:
        ep = make_episode_batch(batch, size)
        try:
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(warmup):
                _step_time(model, ep, opt, sch, crit, device, precision)
            times = [_step_time(model, ep, opt, sch, crit, device, precision)[0] for _ in range(steps)]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        rows.append({"precision": precision, "batch": batch,
                     "episodes_per_s": batch / statistics.median(times),
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30})
    base = rows[0]["episodes_per_s"]
    best = max(rows[1:], key=lambda r: r["episodes_per_s"]) if len(rows) > 1 else rows[0]
    return {"rows": rows, "ratio": best["episodes_per_s"] / base, "best": best,
            "device": torch.cuda.get_device_name(device)}


def run(quick: bool = False) -> dict:
    """CPU step/backbone ratio (and the GPU throughput table when a GPU is present, full mode)."""
    name, size, repeats = ("dlfcn_res18", 64, 1) if quick else ("dlfcn_res101", 256, 5)
    device = torch.device("cpu")
    model = _model(name, device)
    opt = build_optimizer(model, OPTIM_CFG)
    sch = build_scheduler(opt, OPTIM_CFG)
    crit = build_criterion(use_wce=True, ignore_label=255, device=device)
    ep = make_episode_batch(1, size)
    imgs = torch.cat([ep["support_images"][0][0], ep["query_images"][0]])   # the same two images
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    _step_time(model, ep, opt, sch, crit, device, "fp32")                   # warm-up
    hook.remove()
    _backbone_time(model, imgs, device)
    steps, backbone, skipped = [], [], 0
    for _ in range(repeats):                                                # alternating
        t, was_skipped = _step_time(model, ep, opt, sch, crit, device, "fp32")
        skipped += was_skipped
        steps.append(t)
        backbone.append(_backbone_time(model, imgs, device))
    losses = [float(v) for v in _last_losses]
    same_input = len(seen) == 1 and torch.equal(seen[0].float().cpu(), imgs)
    agree = same_input and skipped == 0 and all(math.isfinite(v) for v in losses)
    ratio = statistics.median(steps) / statistics.median(backbone)
    details = (f"step {statistics.median(steps):.3f} s, backbone fwd+bwd "
               f"{statistics.median(backbone):.3f} s (medians of {repeats}, {name}, {size}x{size}, "
               f"{torch.get_num_threads()} threads, {skipped} step(s) skipped)")
    out = row("train_step", f"ALPNet training step vs {name} forward+backward, CPU", ratio,
              f"<= {TARGET:g}x", agree, "the step's encoder input = the backbone's 2 images; no step "
              f"skipped; losses finite{'' if same_input else ' - encoder input differs'}", details)
    if torch.cuda.is_available() and not quick:
        gpu = gpu_throughput()
        out["gpu"] = gpu
        out["details"] += (f"; GPU {gpu['device']}: bf16 batch {gpu['best']['batch']} "
                           f"{gpu['ratio']:.2f}x the episodes/s of fp32 batch 1 (target >= "
                           f"{GPU_TARGET:g}x), peak {gpu['best']['peak_gib']:.1f} GiB")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="ResNet-18, 64 x 64, one timed round")
    args = p.parse_args(argv)
    res = run(quick=args.quick)
    print_row(res)
    for r in res.get("gpu", {}).get("rows", []):
        print(f"  {r['precision']} batch {r['batch']}: {r['episodes_per_s']:.1f} episodes/s, "
              f"peak {r['peak_gib']:.2f} GiB")
    return exit_code(res)


if __name__ == "__main__":
    sys.exit(main())
