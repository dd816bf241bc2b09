"""The first run on a GPU machine, in one command: ``python -m benchmarks.gpu [--dry]``.

On whatever GPUs the machine has (CUDA or ROCm), it measures and prints one table:

1. training steps (``util.training.train_step``: forward, loss, backward, SGD step) on one GPU:
   fp32 batch 1 (the paper's setting), bf16 batch 1, bf16 batch 4: steps/s, episodes/s and peak
   GPU memory, after warm-up steps;
2. DDP training steps on all GPUs (one rank per GPU, fp32 batch 1 per rank);
3. validation (``validation.py``, the Roy et al. protocol) of one snapshot on fold 0 with one GPU
   and with all GPUs: the ranks split the query slices and sum the TP/FP/FN counts, so the mean
   Dice must agree, else the command fails: exactly on the CPU (``--dry``); on GPUs within
   ``GPU_DICE_TOL``, since each rank encodes batches of other slices and cuDNN/MIOpen may pick
   other convolution algorithms for other batch shapes, which can flip argmax ties
   (docs/scale-out.md, 'What is exact where'). The ranks among themselves always agree exactly.

Every measurement runs in spawned processes: the parent never touches the GPU, so no CUDA context
of its own sits on GPU 0 beside rank 0; ``CUBLAS_WORKSPACE_CONFIG`` is set before any of them
starts.

The snapshot is the fp32 model after its training steps (or ``--snapshot``); validation runs on
``--data-dir`` (a prepared CHAOST2 folder, e.g. the real scans) or on a synthetic dataset in the
card's layout (``tests/tinydata.py``), written to a temporary folder. With random weights the
Dice is meaningless; its equality across GPU counts is the check.

``--dry`` runs everything on the CPU with gloo, tiny sizes and 2 ranks standing in for "all
GPUs", so that the script is known to work before a GPU machine is at hand (the test suite runs
it: tests/test_gpu_dryrun.py). Exit status: 0, or 1 when the Dice disagree.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import free_port, sync
from util.backends import set_cublas_workspace

__all__ = ["Sizes", "FULL", "DRY", "TRAIN_CASES", "GPU_DICE_TOL", "synthetic_batch", "measure_training",
           "dice_agree", "run", "table", "main"]

TRAIN_CASES = (("fp32", 1), ("bf16", 1), ("bf16", 4))   # (precision, batch) on one GPU
DDP_CASE = ("fp32", 1)                                    # per rank, on all GPUs
GIB = 1024 ** 3
LR = 1e-3                     # any: the step's cost does not depend on it
RESULT_TIMEOUT_S = 1800.0
GPU_DICE_TOL = 1e-3           # mean Dice, 1 GPU against N GPUs (argmax ties may flip); CPU: exact


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: the encoder, the episode size (H = W), steps after warm-up, the
    synthetic validation scans (H = W, slices), and the number of ranks for "all GPUs"."""
    model: str
    hw: int
    steps: int
    warmup: int
    val_hw: int
    val_depth: int
    dry: bool = False


FULL = Sizes(model="dlfcn_res101", hw=256, steps=20, warmup=3, val_hw=256, val_depth=8)
DRY = Sizes(model="dlfcn_res18", hw=64, steps=2, warmup=1, val_hw=64, val_depth=2, dry=True)


def synthetic_batch(batch: int, hw: int, device: torch.device, seed: int) -> dict[str, Any]:
    """``batch`` 1-way 1-shot episodes in the trainer's layout: noise images with a bright square
    organ (support: top left, query: shifted), the organ's mask as foreground.

    Returns the collated dict ``util.training.train_step`` takes (B x 3 x hw x hw images, B x hw
    x hw masks).
    """
    g = torch.Generator().manual_seed(seed)
    size = hw // 2
    imgs, masks = [], []
    for shift in (0, hw // 8):                        # support, query
        img = torch.rand(batch, 3, hw, hw, generator=g)
        mask = torch.zeros(batch, hw, hw)
        mask[:, shift:shift + size, shift:shift + size] = 1.0
        img += mask[:, None]
        imgs.append(img.to(device))
        masks.append(mask.to(device))
    return {"support_images": [[imgs[0]]],
            "support_mask": [[{"fg_mask": masks[0], "bg_mask": 1.0 - masks[0]}]],
            "query_images": [imgs[1]], "query_labels": [masks[1].long()],
            "index": torch.arange(seed * batch, (seed + 1) * batch)}


def _train_cfg(sizes: Sizes) -> dict[str, Any]:
    return {"model": {"align": True, "init_weights": "random", "which_model": sizes.model,
                      "cls_name": "grid_proto", "proto_grid_size": 8, "feature_hw": [32, 32],
                      "use_coco_init": False, "reload_model_path": None},
            "optim": {"lr": LR, "momentum": 0.9, "weight_decay": 5e-4},
            "lr_milestones": [10 ** 6], "lr_step_gamma": 0.95}


def measure_training(info: Any, sizes: Sizes, precision: str, batch: int,
                     snapshot: Path | None = None) -> dict[str, float]:
    """Steps/s of ``sizes.steps`` training steps after ``sizes.warmup``, on ``info``'s device and
    process group (DDP when it has several ranks); rank 0 writes ``snapshot`` (bare state_dict).

    Returns ``steps_per_s``, ``peak_gib`` (GPU memory of this rank; NaN on the CPU) and
    ``skipped`` (steps skipped by an empty-prototype episode: 0 expected).
    """
    from models.builder import build_model
    from util.backends import apply_compute_settings
    from util.checkpoint import unwrap_model
    from util.distributed import barrier, wrap_ddp
    from util.io import atomic_save_torch
    from util.training import build_criterion, build_optimizer, build_scheduler, episode_errors, train_step

    device = info.device
    restore = apply_compute_settings(deterministic=False, device=device)
    try:
        cfg = _train_cfg(sizes)
        torch.manual_seed(0)
        model = build_model(cfg["model"]).to(device)
        model.train()
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg)
        net = wrap_ddp(model, info)
        crit = build_criterion(use_wce=True, ignore_label=255, device=device)
        episode = synthetic_batch(batch, sizes.hw, device, seed=info.rank)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        skipped = 0.0

        def step() -> None:
            nonlocal skipped
            res = train_step(net, episode, opt, sched, criterion=crit, device=device,
                             precision=precision, skip_errors=episode_errors())
            skipped += res["skipped"]

        for _ in range(sizes.warmup):
            step()
        sync(device)
        barrier()
        start = time.perf_counter()
        for _ in range(sizes.steps):
            step()
        sync(device)
        barrier()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")
        if snapshot is not None and info.rank == 0:
            atomic_save_torch(unwrap_model(net).state_dict(), snapshot)
        return {"steps_per_s": sizes.steps / elapsed, "peak_gib": peak, "skipped": skipped}
    finally:
        restore()


def validation_config(data_dir: Path, log_dir: Path, snapshot: Path, sizes: Sizes) -> dict[str, Any]:
    """``validation.py`` settings: fold 0, label group 0, setting 2 of CHAOST2, the snapshot."""
    return {"modelname": sizes.model, "clsname": "grid_proto", "proto_grid_size": 8,
            "dataset": "CHAOST2_Superpix", "label_sets": 0, "exclude_cls_list": [2, 3], "eval_fold": 0,
            "support_idx": [4], "superpix_scale": "MIDDLE", "seed": 1234, "num_workers": 0,
            "init_weights": "random", "write_figures": False, "exp_prefix": "test_vfold0",
            "reload_model_path": str(snapshot),
            "path": {"log_dir": str(log_dir), "CHAOST2_Superpix": {"data_dir": str(data_dir)},
                     "CHAOST2": {"data_dir": str(data_dir)}}}


def measure_validation(cfg: dict[str, Any]) -> dict[str, float]:
    """One ``validation.py`` run in this process (its launch: 1 process, or a rank of N):
    ``dice`` (mean Dice of the snapshot) and ``seconds``."""
    import validation
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):           # its Dice table: ours is printed below
        result = validation.ex.run("validation_main", config_updates=cfg).result
    return {"dice": float(result[-1]["meanDice"]), "seconds": time.perf_counter() - start}


def _rank_worker(rank: int, world: int, port: int, sizes: Sizes, val_cfg: dict[str, Any],
                 results: Any) -> None:
    """One rank of "all GPUs": DDP training steps, then validation with all ranks."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if sizes.dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(1)
    from util.distributed import cleanup, init_distributed
    try:
        info = init_distributed(0, force_cpu=sizes.dry)
        train = measure_training(info, sizes, *DDP_CASE)
        val = measure_validation(val_cfg)          # joins the same process group, destroys it after
        results.put(("ok", rank, {"train": train, "val": val}))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", rank, f"{type(err).__name__}: {err}"))
        raise
    finally:
        cleanup()


def _one_device_worker(rank: int, world: int, port: int, sizes: Sizes, job: dict[str, Any],
                       results: Any) -> None:
    """The single-device measurements (one process, no process group): the training cases (the
    first writes the snapshot), then validation of the snapshot; also the device's name."""
    if sizes.dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from util.distributed import init_distributed
    try:
        info = init_distributed(0, force_cpu=sizes.dry)
        train = [measure_training(info, sizes, precision, batch, snapshot=job["made"] if k == 0 else None)
                 for k, (precision, batch) in enumerate(TRAIN_CASES)]
        val_cfg = validation_config(job["data_dir"], job["log_dir"], job["snapshot"], sizes)
        name = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "CPU"
        results.put(("ok", rank, {"train": train, "val": measure_validation(val_cfg), "device": name,
                                  "kind": info.device.type}))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", rank, f"{type(err).__name__}: {err}"))
        raise


def _all_ranks(world: int, sizes: Sizes, val_cfg: dict[str, Any], target: Any = None) -> list[dict]:
    """Spawn ``world`` processes of ``target`` (default :func:`_rank_worker`); each one's results,
    in rank order."""
    ctx = mp.get_context("spawn")          # CUDA-safe; no OpenMP state inherited
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target or _rank_worker, args=(r, world, port, sizes, val_cfg, results))
             for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, dict] = {}
    try:
        while len(out) < world:
            status, rank, value = results.get(timeout=RESULT_TIMEOUT_S)
            if status != "ok":
                raise RuntimeError(f"benchmarks.gpu: rank {rank} of {world} failed: {value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return [out[r] for r in range(world)]


@dataclasses.dataclass
class Row:
    what: str
    devices: str
    precision: str = "-"
    batch: str = "-"
    steps_per_s: float = float("nan")
    episodes_per_s: float = float("nan")
    peak_gib: float = float("nan")
    dice: float = float("nan")
    seconds: float = float("nan")
    note: str = ""


def _fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)          # NaN -> "-"


def table(rows: list[Row]) -> str:
    """The rows as one Markdown table."""
    lines = ["| measurement | devices | precision | batch/rank | steps/s | episodes/s | peak GiB | "
             "mean Dice | seconds | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.devices} | {r.precision} | {r.batch} | {_fmt(r.steps_per_s, '.2f')} | "
                     f"{_fmt(r.episodes_per_s, '.2f')} | {_fmt(r.peak_gib, '.2f')} | {_fmt(r.dice, '.6f')} | "
                     f"{_fmt(r.seconds, '.1f')} | {r.note} |")
    return "\n".join(lines)


def _machine(sizes: Sizes) -> tuple[str, int]:
    """(versions, number of devices for "all GPUs"), without creating a CUDA context here."""
    versions = f"torch {torch.__version__}"
    if getattr(torch.version, "hip", None):
        versions += f", HIP {torch.version.hip}"
    elif torch.version.cuda:
        versions += f", CUDA {torch.version.cuda}"
    if sizes.dry or not torch.cuda.is_available():
        return f"CPU ({platform.machine()}, {os.cpu_count()} cores), gloo; {versions}", 2
    return versions, torch.cuda.device_count()


def dice_agree(one: float, others: list[float], device_kind: str) -> bool:
    """The ranks' Dice equal among themselves; equal to one device's on the CPU, within
    ``GPU_DICE_TOL`` on GPUs."""
    if any(d != others[0] for d in others):
        return False
    tol = 0.0 if device_kind == "cpu" else GPU_DICE_TOL
    return abs(others[0] - one) <= tol


def run(sizes: Sizes, *, data_dir: Path | None = None, snapshot: Path | None = None,
        work_dir: Path | None = None) -> tuple[list[Row], str, bool]:
    """Every measurement; (rows, machine description, Dice agree on 1 and all devices)."""
    versions, n_all = _machine(sizes)
    if not sizes.dry and not torch.cuda.is_available():
        raise RuntimeError("no GPU visible: run `python -m benchmarks.gpu --dry` for the CPU check")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp_name:
        tmp = Path(tmp_name)
        made = tmp / "snapshot.pth"
        synthetic = data_dir is None
        if synthetic:
            # the synthetic dataset of the test suite: scans in the card's layout, truth known
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.tinydata import build_tiny_dataset
            data_dir = build_tiny_dataset(tmp / "CHAOST2", "CHAOST2", hw=sizes.val_hw,
                                          depth=sizes.val_depth).data_dir
        job = {"made": made, "data_dir": Path(data_dir), "log_dir": tmp / "one", "snapshot": snapshot or made}
        (single,) = _all_ranks(1, sizes, job, target=_one_device_worker)
        one = "CPU" if single["kind"] == "cpu" else "1 GPU"
        machine = versions if single["kind"] == "cpu" else f"{single['device']} x{n_all}; {versions}"
        rows = [Row("train", one, precision, str(batch), res["steps_per_s"], res["steps_per_s"] * batch,
                    res["peak_gib"], note=f"{sizes.model} {sizes.hw}x{sizes.hw}, {sizes.steps} steps"
                    + (f", {res['skipped']:.0f} skipped" if res["skipped"] else ""))
                for (precision, batch), res in zip(TRAIN_CASES, single["train"])]
        val_cfg = validation_config(Path(data_dir), tmp / "runs", snapshot or made, sizes)
        ranks = _all_ranks(n_all, sizes, val_cfg)
        all_dev = f"{n_all} {'gloo ranks' if single['kind'] == 'cpu' else 'GPUs'}"
        ddp = ranks[0]["train"]
        base = rows[0].steps_per_s
        rows.append(Row("train DDP", all_dev, DDP_CASE[0], str(DDP_CASE[1]), ddp["steps_per_s"],
                        ddp["steps_per_s"] * n_all * DDP_CASE[1], max(r["train"]["peak_gib"] for r in ranks),
                        note=f"{n_all * ddp['steps_per_s'] / base:.2f}x the episodes/s of {one}"))
        val_one, dice_all = single["val"], ranks[0]["val"]["dice"]
        same = dice_agree(val_one["dice"], [r["val"]["dice"] for r in ranks], single["kind"])
        rows.append(Row("validation fold 0", one, dice=val_one["dice"], seconds=val_one["seconds"],
                        note=f"{'synthetic scans' if synthetic else data_dir}, "
                             f"{'snapshot ' + str(snapshot) if snapshot else 'the fp32 model above'}"))
        exact = "equal to" if single["kind"] == "cpu" else f"within {GPU_DICE_TOL:g} of"
        rows.append(Row("validation fold 0", all_dev, dice=dice_all, seconds=ranks[0]["val"]["seconds"],
                        note=f"Dice {exact} 1 device: " + ("yes" if same else "NO")))
    return rows, machine, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true",
                        help="CPU, gloo, tiny sizes, 2 ranks as 'all GPUs' (the suite's check)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="prepared CHAOST2 folder for the validation rows (default: synthetic scans)")
    parser.add_argument("--snapshot", type=Path, default=None,
                        help="snapshot to validate (default: the fp32 model after its training steps)")
    parser.add_argument("--steps", type=int, default=None, help=f"timed training steps (default {FULL.steps})")
    parser.add_argument("--model", default=None, help=f"encoder (default {FULL.model}; --dry: {DRY.model})")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    if args.dry:      # the CPU even where GPUs exist (before CUDA starts; spawned ranks inherit it)
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["HIP_VISIBLE_DEVICES"] = ""
    set_cublas_workspace()        # before any process creates a cuBLAS handle (inherited)
    if args.steps is not None:
        sizes = dataclasses.replace(sizes, steps=args.steps)
    if args.model is not None:
        sizes = dataclasses.replace(sizes, model=args.model)
    rows, machine, same = run(sizes, data_dir=args.data_dir, snapshot=args.snapshot)
    print(f"benchmarks.gpu{' (dry: CPU stand-in, numbers mean nothing)' if sizes.dry else ''} on {machine}")
    print(table(rows))
    if not same:
        print("FAILED: the validation Dice disagrees between 1 device and all devices", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
