"""One ALPNet training step (``util.training.train_step``: forward with the ALP head and the
alignment loss, weighted cross-entropy, backward, SGD, scheduler) against the backbone's own
forward + backward on the same two images (support + query), alternating in one process.
Target on the CPU: at most 1.25x (ResNet-101 encoder, 256 x 256, 1-way 1-shot, alignment on).
An untimed round of each first. Checked (the run fails otherwise): the images the step's encoder
received equal the backbone's two images (the same work), no step was skipped and every loss
is finite. The two paths compute different things, so no output is compared.

Precision rows (CPU): the same step in fp32, in bf16 autocast, and in bf16 with the encoder
compiled (``compile=True``, where this machine can compile), each from the same initial weights
on the same episode, alternating step by step after untimed warm-up steps (the compiled one
compiles there). Agreement: the first step's query loss of bf16 and of the compiled step within
``LOSS_RTOL`` (5 %) of fp32's. The alignment loss is printed, not compared: its masks are the
argmax of the network's own query prediction, whose near-tied pixels (every pixel of an
untrained network is near a tie) flip with any rounding, so it moves by tens of percent.
Targets on a CPU with native bf16: bf16 at least 1.8x the fp32 step, compiled bf16 at least 2.2x.

With a GPU (full mode): episodes per second at batch 1 in fp32 (the original's setting) against
the best batch size in bf16, same model; target at least 3x; peak GPU memory of each setting.

``python -m benchmarks.train_step [--quick] [--rounds N]``
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import torch

from benchmarks.common import all_rows, exit_code, print_row, row, sync
from util.backends import compile_problem, cpu_native_bf16
from util.training import build_criterion, build_optimizer, build_scheduler, train_step
from util.training.loop import compile_encoder

__all__ = ["run", "make_episode_batch", "gpu_throughput", "precision_rows", "losses_agree", "TARGET",
           "GPU_TARGET", "BF16_TARGET", "COMPILE_TARGET", "LOSS_RTOL"]

TARGET = 1.25           # target: one step at most 1.25x the backbone's forward + backward
GPU_TARGET = 3.0        # target: best bf16 batch at least 3x the batch-1 fp32 episodes/s
BF16_TARGET = 1.8       # target on a CPU with native bf16: the bf16 step at least 1.8x fp32's
COMPILE_TARGET = 2.2    # ... and with the encoder compiled, at least 2.2x
LOSS_RTOL = 0.05        # first-step query loss of bf16 (compiled or not) within 5 % of fp32's
LOSS_ATOL = 1e-3        # plus this, for a loss near 0
WARMUP_STEPS = 2        # untimed steps of each path (compilation happens in the first)
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


def losses_agree(reference: list[float], other: list[float]) -> bool:
    """Each loss within ``LOSS_RTOL`` (relative) + ``LOSS_ATOL`` of the reference's."""
    return len(reference) == len(other) and all(
        math.isfinite(o) and abs(o - r) <= LOSS_RTOL * abs(r) + LOSS_ATOL for r, o in zip(reference, other))


def _precision_paths(name: str, compile_ok: bool) -> dict[str, tuple]:
    """fp32, bf16 (and compiled bf16) models from the same initial weights, with their optimizers."""
    device = torch.device("cpu")
    init = copy.deepcopy(_model(name, device).state_dict())
    paths = {}
    for key in ("fp32", "bf16") + (("bf16+compile",) if compile_ok else ()):
        model = _model(name, device)
        model.load_state_dict(init)
        if key.endswith("compile"):
            compile_encoder(model, device)
        opt = build_optimizer(model, OPTIM_CFG)
        paths[key] = (model, opt, build_scheduler(opt, OPTIM_CFG))
    return paths


def precision_rows(name: str, size: int, rounds: int) -> list[dict]:
    """The CPU precision rows: fp32 vs bf16, and vs compiled bf16 where compilation can run."""
    device = torch.device("cpu")
    problem = compile_problem(device)
    paths = _precision_paths(name, problem is None)
    crit = build_criterion(use_wce=True, ignore_label=255, device=device)
    ep = make_episode_batch(1, size)
    first, times = {}, {key: [] for key in paths}
    for key, (model, opt, sch) in paths.items():
        for i in range(WARMUP_STEPS):
            _step_time(model, ep, opt, sch, crit, device, key[:4])
            if i == 0:
                first[key] = [float(v) for v in _last_losses]
    for _ in range(max(int(rounds), 1)):                                    # alternating
        for key, (model, opt, sch) in paths.items():
            times[key].append(_step_time(model, ep, opt, sch, crit, device, key[:4])[0])
    med = {key: statistics.median(v) for key, v in times.items()}
    native = "native bf16" if cpu_native_bf16() else "NO native bf16 (emulated)"
    out = []
    for key, target in (("bf16", BF16_TARGET), ("bf16+compile", COMPILE_TARGET)):
        if key not in paths:
            continue
        agree = losses_agree(first["fp32"][:1], first[key][:1])      # the query loss
        out.append(row(f"train_step.{key}", f"training step, {key} vs fp32, CPU ({name}, {size}x{size})",
                       med["fp32"] / med[key], f">= {target:g}x on a CPU with native bf16", agree,
                       f"first-step query loss within {LOSS_RTOL:.0%} of fp32's: fp32 "
                       f"{first['fp32'][0]:.4f}, {key} {first[key][0]:.4f} (alignment loss "
                       f"{first['fp32'][1]:.4f} and {first[key][1]:.4f}, not compared)",
                       f"fp32 {med['fp32']:.3f} s, {key} {med[key]:.3f} s per step "
                       f"(medians of {len(times[key])}, {torch.get_num_threads()} threads, {native})"))
    if problem:
        out[-1]["details"] += f"; compiled row not run: {problem}"
    return out


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """CPU step/backbone ratio, the CPU precision rows (``extra_rows``) and, with a GPU in full
    mode, the GPU throughput table."""
    name, size, repeats = ("dlfcn_res18", 64, 1) if quick else ("dlfcn_res101", 256, 5)
    repeats = int(rounds) if rounds else repeats
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
    out["extra_rows"] = precision_rows(name, size, repeats)
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
    p.add_argument("--rounds", type=int, default=None, help="timed rounds of each path (default 5; quick 1)")
    args = p.parse_args(argv)
    res = run(quick=args.quick, rounds=args.rounds)
    rows = all_rows(res)
    for r in rows:
        print_row(r)
    for r in res.get("gpu", {}).get("rows", []):
        print(f"  {r['precision']} batch {r['batch']}: {r['episodes_per_s']:.1f} episodes/s, "
              f"peak {r['peak_gib']:.2f} GiB")
    return max(exit_code(r) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
