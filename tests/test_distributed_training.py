"""DDP training and validation with 2 gloo ranks on the CPU (issue 5).

(a) 2 ranks with batch size 1 for k steps give the parameters of one process that averages, at
    each step, the gradients of the same two episodes (each episode its own BatchNorm batch).
(b) validation of that run's snapshot with 2 ranks (examples/frontier/test.sbatch, stand-in
    srun) gives exactly the metrics and predictions of one process.
(c) SIGUSR1 on one rank: all ranks agree, rank 0 saves, all exit cleanly; the requeued job
    (examples/frontier/train.sbatch through stand-in srun, real script text) resumes from that
    snapshot and ends with the parameters of the uninterrupted run.
Tiny: 64 x 64 slices, 2 per scan, ResNet-18 encoder, random init, 3 steps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.disthelper import free_port, run_ranks
from tests.test_sbatch import job_env
from tests.tinydata import build_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
K_STEPS = 3
EXP_PREFIX = "train_CHAOST2_Superpix_lbgroup0_scale_MIDDLE_vfold0"   # what the launcher passes
TIMEOUT_S = 300
DDP_TOL = 1e-5          # largest parameter difference between 2 ranks and the 1-process reference


def tiny_config(data_dir: Path, log_dir: Path, **more) -> dict:
    """The launcher's SPEC 7 arguments for fold 0, group 0 with the tiny overrides of the sbatch
    test below (MODEL, NSTEP, NWORKER, MAX_ITER and the extra arguments)."""
    cfg = {
        "modelname": "dlfcn_res18", "usealign": True, "optim_type": "sgd", "num_workers": 0,
        "scan_per_load": -1, "label_sets": 0, "use_wce": True, "exp_prefix": EXP_PREFIX,
        "clsname": "grid_proto", "n_steps": K_STEPS, "exclude_cls_list": [2, 3], "eval_fold": 0,
        "dataset": "CHAOST2_Superpix", "proto_grid_size": 8, "max_iters_per_load": 10, "min_fg_data": 1,
        "seed": 1234, "save_snapshot_every": 1000, "superpix_scale": "MIDDLE", "lr_step_gamma": 0.95,
        "support_idx": [4], "init_weights": "random", "deterministic": True, "print_interval": 1,
        "path": {"log_dir": str(log_dir), "CHAOST2_Superpix": {"data_dir": str(data_dir)},
                 "CHAOST2": {"data_dir": str(data_dir)}},
    }
    cfg.update(more)
    return cfg


def experiment_dir(log_dir: Path) -> Path:
    return log_dir / f"mySSL_{EXP_PREFIX}_CHAOST2_Superpix_sets_0_1shot"


def _train_rank(cfg: dict, signal_at_forward: int | None = None) -> dict:
    """One rank: ``python3 training.py with cfg`` in-process; optionally SIGUSR1 to itself (rank 1
    only) during its ``signal_at_forward``-th forward."""
    import util.training.loop as trainer
    from util.distributed import launch_rank

    if signal_at_forward is not None and launch_rank() == 1:
        build = trainer.build_model

        def build_with_signal(c, **kw):
            model = build(c, **kw)
            calls = []

            def hook(module, args):
                calls.append(1)
                if len(calls) == signal_at_forward:
                    os.kill(os.getpid(), signal.SIGUSR1)
            model.register_forward_pre_hook(hook)
            return model
        trainer.build_model = build_with_signal
    import training
    from util.signals import TrainingInterrupted
    try:
        return training.ex.run("main", config_updates=cfg).result
    except TrainingInterrupted as stop:      # rank 0 of a stopped run: Sacred recorded INTERRUPTED
        return {"status": "stopped", "step": stop.step, "snapshot": stop.snapshot,
                "command": stop.command, "interrupted": training.ex.current_run.status}


def _validate(cfg: dict) -> object:
    """``python3 validation.py with cfg`` in-process."""
    import validation
    return validation.ex.run("validation_main", config_updates=cfg).result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "CHAOST2", "CHAOST2", hw=64, depth=2)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """2 gloo ranks, k steps, no interruption: (results per rank, log dir)."""
    log_dir = tmp_path_factory.mktemp("ddp_runs")
    results = run_ranks(_train_rank, tiny_config(tiny.data_dir, log_dir), timeout=TIMEOUT_S)
    return results, log_dir


def _params(state: dict, names) -> dict[str, torch.Tensor]:
    return {n: state[n].float() for n in names}


def single_process_reference(cfg: dict, world: int = 2, ranks: tuple[int, ...] | None = None):
    """One process, k steps; each step averages the gradients of the episodes that ranks
    0..world-1 draw (each forward alone: its own BatchNorm batch). Buffers (BatchNorm running
    statistics) follow rank 0's episodes, as DDP broadcasts rank 0's buffers. ``ranks``: whose
    episode streams to average instead (the negative control gives one a foreign stream)."""
    from dataloaders.episodes import episode_loader
    from dataloaders.training_set import build_training_dataset
    from models.builder import build_model
    from util.experiment.config_check import check_config
    from util.rng import seed_everything
    from util.training import build_criterion, build_optimizer, build_scheduler, episode_inputs, loss

    summary = check_config(cfg)
    previous = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # one thread, as each rank of tests/disthelper.py: summation order then matches the ranks'
    # (2 threads differ from 1 by about 1e-4 after 3 steps)
    torch.set_num_threads(1)
    try:
        seed_everything(cfg["seed"])
        model = build_model(cfg["model"])
        model.train()
        optimizer, cpu = build_optimizer(model, cfg), torch.device("cpu")
        scheduler = build_scheduler(optimizer, cfg)
        criterion = build_criterion(use_wce=True, ignore_label=255, device=cpu)
        loaders = [iter(episode_loader(build_training_dataset(cfg, summary.card, data_dir=str(summary.data_dir),
                                                              train_ids=summary.train_ids, rank=r),
                                       start=0, batch_size=1, num_workers=0))
                   for r in (ranks if ranks is not None else range(world))]
        params = [p for p in model.parameters() if p.requires_grad]
        first_images = None
        for _ in range(cfg["n_steps"]):
            grads = []
            episodes = [next(it) for it in loaders]
            if first_images is None:
                first_images = [ep["query_images"][0] for ep in episodes]
            for r, ep in enumerate(episodes):
                kept = {n: b.clone() for n, b in model.named_buffers()} if r > 0 else None
                supp, fg, bg, qry, labels = episode_inputs(ep, cpu)
                out = model(supp, fg, bg, qry, isval=False, val_wsize=None)
                total = loss(out[0], labels, out[1], criterion)[0]
                grads.append(torch.autograd.grad(total, params, allow_unused=True))
                if kept is not None:
                    with torch.no_grad():
                        for n, b in model.named_buffers():
                            b.copy_(kept[n])
            optimizer.zero_grad(set_to_none=True)
            for i, p in enumerate(params):
                got = [g[i] for g in grads if g[i] is not None]
                p.grad = torch.stack(got).sum(0) / world if got else None
            optimizer.step()
            scheduler.step()
        return model.state_dict(), first_images
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(threads)


def test_two_ranks_equal_one_process_averaging_two_episodes(uninterrupted):
    results, log_dir = uninterrupted
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert [r["step"] for r in results] == [K_STEPS, K_STEPS]
    # rank 0 alone owns the run directory: one Sacred run, one snapshot folder
    runs = [p.name for p in experiment_dir(log_dir).iterdir() if p.name.isdigit()]
    assert runs == ["1"]
    assert sorted(p.name for p in (experiment_dir(log_dir) / "1" / "snapshots").iterdir()) == [f"{K_STEPS}.pth"]
    snap = torch.load(results[0]["snapshot"], map_location="cpu", weights_only=True)
    assert snap["step"] == K_STEPS

    ref_state, first_images = single_process_reference(snap["config"])
    assert not torch.equal(first_images[0], first_images[1]), "the ranks must draw different episodes"
    names = [n for n, p in ref_state.items() if n in dict(snap["model"]) and p.is_floating_point()]
    ddp, ref = _params(snap["model"], names), _params(ref_state, names)
    seed_init = _initial_state(snap["config"])
    moved = max((ref[n] - seed_init[n]).abs().max().item() for n in names)
    assert moved > 1e-4, "training must have changed the parameters"
    worst = max((ddp[n] - ref[n]).abs().max().item() for n in names)
    assert worst < DDP_TOL, f"DDP parameters/buffers differ from the averaged-gradient reference by {worst:g}"


def test_negative_control_one_rank_with_another_episode_fails_the_comparison(uninterrupted):
    """The comparison above can fail: a reference in which rank 1's episodes come from another
    stream (rank 2's) differs from the DDP run by far more than the tolerance."""
    results, _ = uninterrupted
    snap = torch.load(results[0]["snapshot"], map_location="cpu", weights_only=True)
    wrong_state, _ = single_process_reference(snap["config"], ranks=(0, 2))
    names = [n for n, p in wrong_state.items() if n in dict(snap["model"]) and p.is_floating_point()]
    ddp, wrong = _params(snap["model"], names), _params(wrong_state, names)
    worst = max((ddp[n] - wrong[n]).abs().max().item() for n in names)
    assert worst > 100 * DDP_TOL, f"a foreign episode on one rank changed the parameters by only {worst:g}"


def _initial_state(cfg: dict) -> dict[str, torch.Tensor]:
    from models.builder import build_model
    from util.rng import seed_everything
    seed_everything(cfg["seed"])
    return {n: t.float() for n, t in build_model(cfg["model"]).state_dict().items()}


def test_signal_on_one_rank_saves_and_the_requeued_job_resumes(uninterrupted, tiny, tmp_path):
    (full_0, _), full_log = uninterrupted
    log_dir = tmp_path / "runs"
    cfg = tiny_config(tiny.data_dir, log_dir)
    # SIGUSR1 reaches rank 1 alone, during its first forward: it asks at step 2, all stop after it
    results = run_ranks(_train_rank, cfg, 1, timeout=TIMEOUT_S)
    assert [r["status"] for r in results] == ["stopped", "stopped"]
    stop_step = results[0]["step"]
    assert results[1]["step"] == stop_step and 0 < stop_step < K_STEPS
    saved = experiment_dir(log_dir) / "1" / "snapshots" / f"{stop_step}.pth"
    assert results[0]["snapshot"] == str(saved) and saved.is_file()
    assert [p.name for p in experiment_dir(log_dir).iterdir() if p.name.isdigit()] == ["1"]
    # rank 0 raised TrainingInterrupted (exit 3 from the command line) with the resume command;
    # rank 1 returned (exit 0), so a launcher's kill-on-bad-exit cannot cut rank 0 short
    assert results[0]["interrupted"] == "INTERRUPTED" and "interrupted" not in results[1]
    assert results[0]["command"].endswith(f"resume_from={saved.resolve()}")

    # requeued job: the real train.sbatch (RESUME=1 by default) through stand-in srun, 2 "nodes";
    # its `python3` is the tests' interpreter (job_env: a script exec'ing sys.executable)
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="1", CLUSTER="cpu", FOLDS="0", LABEL_GROUPS="0",
                  LOGDIR=str(log_dir), DATA_DIR=str(tiny.data_dir), MODEL="dlfcn_res18", NSTEP=str(K_STEPS),
                  NWORKER="0", MAX_ITER="10", SNAPSHOT_INTERVAL="1000", SLURM_RESTART_COUNT="1",
                  MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    job = subprocess.run(["bash", str(ROOT / "examples" / "frontier" / "train.sbatch"),
                          "init_weights=random", "deterministic=True", "print_interval=1"],
                         env=env, cwd=ROOT, text=True, encoding="utf-8", capture_output=True, timeout=TIMEOUT_S)
    assert job.returncode == 0, job.stderr[-4000:]
    assert "resume=True" in job.stderr                      # the launcher's printed command
    final = experiment_dir(log_dir) / "2" / "snapshots" / f"{K_STEPS}.pth"
    assert final.is_file()
    # it continued: the requeued run logged only the steps after the snapshot
    logged = json.loads((experiment_dir(log_dir) / "2" / "metrics.json").read_text(encoding="utf-8"))["loss"]["steps"]
    assert logged == list(range(stop_step + 1, K_STEPS + 1))
    resumed = torch.load(final, map_location="cpu", weights_only=True)["model"]
    full = torch.load(full_0["snapshot"], map_location="cpu", weights_only=True)["model"]
    worst = max((resumed[n].float() - full[n].float()).abs().max().item()
                for n in full if full[n].is_floating_point())
    assert worst < 1e-6, f"interrupted + resumed differs from the uninterrupted run by {worst:g}"


def _sacred_values(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {name: (m["steps"], m["values"]) for name, m in metrics.items()}


def _predictions(run_dir: Path) -> dict:
    import SimpleITK as sitk
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted((run_dir / "interm_preds").glob("*.nii.gz"))}


def test_validation_two_ranks_equal_one(uninterrupted, tiny, tmp_path):
    (full_0, _), train_log = uninterrupted
    extra = {"init_weights": "random", "write_figures": False}
    one_log = tmp_path / "one"
    cfg = tiny_config(tiny.data_dir, one_log, exp_prefix="test_vfold0", reload_model_path=full_0["snapshot"],
                      **extra)
    (one,) = run_ranks(_validate, cfg, world_size=1, launcher="none", timeout=TIMEOUT_S)

    # 2 ranks: the real test.sbatch; the launcher finds the training run's newest snapshot itself
    env = job_env(tmp_path, nodes=1, GPUS_PER_NODE="2", CLUSTER="cpu", FOLDS="0", LABEL_GROUPS="0",
                  LOGDIR=str(train_log), DATA_DIR=str(tiny.data_dir), MODEL="dlfcn_res18", NSTEP=str(K_STEPS),
                  NWORKER="0", MAX_ITER="10", SNAPSHOT_INTERVAL="1000", MASTER_PORT=str(free_port()),
                  OMP_NUM_THREADS="1")
    job = subprocess.run(["bash", str(ROOT / "examples" / "frontier" / "test.sbatch"),
                          *(f"{k}={v}" for k, v in extra.items())],
                         env=env, cwd=ROOT, text=True, encoding="utf-8", capture_output=True, timeout=TIMEOUT_S)
    assert job.returncode == 0, job.stderr[-4000:]
    assert f"reload_model_path={full_0['snapshot']}" in job.stderr

    exp = "mySSL_test_vfold0_CHAOST2_Superpix_sets_0_1shot"
    one_dir, two_dir = one_log / exp / "1", train_log / exp / "1"
    assert not (train_log / exp / "2").exists(), "rank 1 must not open a second run directory"
    one_metrics, two_metrics = _sacred_values(one_dir), _sacred_values(two_dir)
    assert "mar_val_batches_meanDice" in one_metrics
    assert two_metrics == one_metrics
    one_preds, two_preds = _predictions(one_dir), _predictions(two_dir)
    assert one_preds and one_preds.keys() == two_preds.keys()
    for name in one_preds:
        np.testing.assert_array_equal(two_preds[name], one_preds[name], err_msg=name)
    assert any(p.any() for p in one_preds.values()), "a prediction with foreground (else equality is vacuous)"
