"""util/distributed.py alone: launcher detection, errors, and 2 gloo ranks on the CPU."""
from __future__ import annotations

import pytest
import torch

from tests.disthelper import LAUNCH_VARS, run_ranks
from util import distributed as D
from util.checkpoint import unwrap_model


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables: as a plain `python3 training.py`."""
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_no_launcher_is_one_process_on_cpu(clean_env):
    info = D.init_distributed(0, force_cpu=True)
    assert info == D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert not info.distributed and info.is_main
    assert D.launcher_name() == "none" and D.launch_rank() == 0
    assert not D.is_dist() and D.get_rank() == 0 and D.get_world_size() == 1


def test_torchrun_variables(clean_env):
    clean_env.setenv("RANK", "5")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    assert D.launcher_name() == "torchrun"
    assert D._launch_env() == (5, 8, 1)
    assert D.launch_rank() == 5


def _setenv(mp, **values: str) -> None:
    for var, value in values.items():
        mp.setenv(var, value)


def test_slurm_variables(clean_env):
    # a task of `srun -n 16` in a job allocated 32 tasks: the step's count is the world size
    _setenv(clean_env, SLURM_PROCID="11", SLURM_NTASKS="32", SLURM_STEP_NUM_TASKS="16", SLURM_LOCALID="3",
            SLURM_STEP_ID="2", SLURM_STEPID="2", SLURM_JOB_ID="777")
    assert D.launcher_name() == "slurm"
    assert D._launch_env() == (11, 16, 3)     # local rank from SLURM_LOCALID, not 11 % n_gpus


def test_slurm_single_task_is_one_process(clean_env):
    _setenv(clean_env, SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_STEP_NUM_TASKS="1", SLURM_LOCALID="0",
            SLURM_STEP_ID="0")
    assert D.launcher_name() == "none"
    assert D.init_distributed(0, force_cpu=True).backend is None


# What `sbatch -n 8` gives the batch script itself (the batch step is not a rank): no step id
# (current Slurm), or a reserved id (4294967291 = batch script, 4294967294 = NO_VAL of old
# releases, 4294967290 = salloc's interactive step), or a step name
@pytest.mark.parametrize("step_id", [None, "4294967291", "4294967294", "4294967290", "batch", "extern"],
                         ids=["unset", "batch-script-id", "no-val", "interactive", "name-batch", "name-extern"])
def test_batch_script_is_one_process(clean_env, step_id):
    _setenv(clean_env, SLURM_JOB_ID="4242", SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_LOCALID="0",
            MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    if step_id is not None:
        _setenv(clean_env, SLURM_STEP_ID=step_id, SLURM_STEPID=step_id)
    assert D.srun_step_id() is None
    assert D.launcher_name() == "none" and D.launch_rank() == 0
    # a bare `python3 training.py` in the script: one process, no init_process_group (would block)
    assert D.init_distributed(0, force_cpu=True) == D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert not D.is_dist()


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_STEP_ID": "0"}, 0),
    ({"SLURM_STEPID": "17"}, 17),                 # the older name alone
    ({"SLURM_STEP_ID": "4294967279"}, 4294967279),  # 0xffffffef: the last id below the reserved ones
    ({"SLURM_STEP_ID": "4294967280"}, None),
    ({"SLURM_STEP_ID": ""}, None),
    ({}, None),
])
def test_srun_step_id(env, expected):
    assert D.srun_step_id(env) == expected


@pytest.mark.parametrize("env, expected", [
    ({"MASTER_PORT": "3442", "SLURM_JOB_ID": "1234567"}, 3442),   # given: kept
    ({"SLURM_JOB_ID": "1234567"}, 20000 + 4567),                  # 20000 + id % 10000
    ({"SLURM_JOB_ID": "1234568"}, 20000 + 4568),                  # the next job: another port
    ({"SLURM_JOB_ID": "30000"}, 20000),
    ({"MASTER_PORT": ""}, None),
    ({}, None),
])
def test_rendezvous_port(env, expected):
    assert D.rendezvous_port(env) == expected


def test_rendezvous_port_rejects_non_integers():
    with pytest.raises(ValueError, match="SLURM_JOB_ID='12_3'"):
        D.rendezvous_port({"SLURM_JOB_ID": "12_3"})


def test_torchrun_inside_srun_uses_torchrun_values(clean_env):
    for var, value in {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
                       "RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "6"}.items():
        clean_env.setenv(var, value)
    assert D._launch_env() == (6, 16, 6)


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_missing_rendezvous_variable_is_named(clean_env, missing):
    _setenv(clean_env, SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_STEP_ID="0")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29999")
    clean_env.delenv(missing)
    with pytest.raises(RuntimeError, match=f"{missing} is not set.*srun"):
        D.init_distributed(0, force_cpu=True)
    assert not D.is_dist()


def test_malformed_variables_are_named(clean_env):
    clean_env.setenv("SLURM_STEP_ID", "0")
    clean_env.setenv("SLURM_PROCID", "first")
    clean_env.setenv("SLURM_NTASKS", "2")
    with pytest.raises(ValueError, match="SLURM_PROCID='first'"):
        D.launch_rank()
    clean_env.setenv("SLURM_PROCID", "2")       # rank 2 of 2 ranks does not exist
    with pytest.raises(ValueError, match="SLURM_PROCID=2, SLURM_NTASKS=2"):
        D.launch_rank()


@pytest.mark.parametrize("n_visible, local_rank, expected", [
    (8, 3, 3),      # a node's GCDs all visible: the local rank's own
    (1, 3, 0),      # srun --gpus-per-task=1: each task sees only its own, as device 0
])
def test_device_follows_local_rank(monkeypatch, n_visible, local_rank, expected):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert D.select_device(None, local_rank) == torch.device("cuda", expected)
    assert chosen == [expected]


def test_device_missing_among_several_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    with pytest.raises(ValueError, match="local rank 3 needs GPU 3, but only 2 are visible"):
        D.select_device(None, 3)


def test_single_process_helpers_are_identities(clean_env):
    model = torch.nn.Linear(2, 1)
    info = D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert D.wrap_ddp(model, info) is model and unwrap_model(model) is model
    t = torch.tensor([3, 4], dtype=torch.int64)
    assert D.all_reduce_sum(t) is t and t.tolist() == [3, 4]
    assert D.broadcast_object({"a": 1}) == {"a": 1}


# ---- two gloo ranks --------------------------------------------------------------------------

def _collectives_body() -> dict:
    info = D.init_distributed(0, force_cpu=True)
    r = info.rank
    counts = D.all_reduce_sum(torch.tensor([[r + 1, 10 * r], [2**40, 0]], dtype=torch.int64))
    model = D.wrap_ddp(torch.nn.Linear(2, 1, bias=False), info)
    with torch.no_grad():
        unwrap_model(model).weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0]]) if r == 0 else torch.tensor([[3.0, 5.0]])
    (model(x) ** 2).sum().backward()
    return {
        "info": (info.rank, info.world_size, info.local_rank, str(info.device), info.backend),
        "helpers": (D.is_dist(), D.get_rank(), D.get_world_size(), D.is_main_process()),
        "counts": counts.tolist(), "dtype": str(counts.dtype),
        "broadcast": D.broadcast_object(f"from rank {r}"),
        "grad": unwrap_model(model).weight.grad.tolist(),
        "unwrapped_keys": sorted(unwrap_model(model).state_dict()),
    }


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_gloo_ranks(launcher):
    out = run_ranks(_collectives_body, launcher=launcher)
    for rank, res in enumerate(out):
        assert res["info"] == (rank, 2, rank, "cpu", "gloo")
        assert res["helpers"] == (True, rank, 2, rank == 0)
        # sum over ranks: [[1+2, 0+10], [2^41, 0]], exact in int64
        assert res["counts"] == [[3, 10], [2**41, 0]] and res["dtype"] == "torch.int64"
        assert res["broadcast"] == "from rank 0"
        # d/dw (w.x)^2 = 2 (w.x) x; w=(1,-1): rank 0 x=(1,2) -> -2*(1,2); rank 1 x=(3,5) -> -4*(3,5)
        # DDP averages: ((-2-12)/2, (-4-20)/2) = (-7, -12)
        assert res["grad"] == [[-7.0, -12.0]]
        assert res["unwrapped_keys"] == ["weight"]


def _fails_on_rank_one() -> int:
    if D.launch_rank() == 1:
        raise ValueError("rank one broke")
    return 0


def test_helper_reports_a_failing_rank():
    with pytest.raises(RuntimeError, match="rank 1 of 2 failed:(.|\n)*rank one broke"):
        run_ranks(_fails_on_rank_one, timeout=60)


def _port_body() -> tuple:
    info = D.init_distributed(0, force_cpu=True)
    return info.rank, info.world_size, D.rendezvous_port(), D.all_reduce_sum(torch.ones(1)).item()


def _free_derived_port() -> int:
    """A job id whose derived port (PORT_BASE + id % PORT_SPAN) is free now."""
    import socket
    for job_id in range(1, D.PORT_SPAN):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", D.PORT_BASE + job_id))
            except OSError:
                continue
            return job_id
    raise RuntimeError("no free port in the derived range")


def test_two_srun_ranks_meet_on_the_port_of_the_job_id():
    """srun ranks without MASTER_PORT rendezvous on PORT_BASE + SLURM_JOB_ID % PORT_SPAN."""
    job_id = _free_derived_port() + 3 * D.PORT_SPAN
    out = run_ranks(_port_body, launcher="slurm", extra_env={"MASTER_PORT": "", "SLURM_JOB_ID": str(job_id)},
                    timeout=60)
    port = D.PORT_BASE + job_id % D.PORT_SPAN
    assert out == [(0, 2, port, 2.0), (1, 2, port, 2.0)]


# ---- a failed alignment pass among good episodes, 2 ranks -----------------------------------

HW = 128


def _align_episode(kind: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Support: noise with a constant right half (the foreground). Query 'bad': constant
    everywhere, so the model predicts foreground everywhere and its alignment pass finds no
    background prototype; 'good': noise with a constant bottom half.
    Returns (support 1 x 3 x H x W, fg 1 x H x W, query 1 x 3 x H x W, query label 1 x H x W)."""
    g = torch.Generator().manual_seed(seed)
    sup = torch.randn(1, 3, HW, HW, generator=g)
    sup[..., HW // 2:] = 2.0
    fg = torch.zeros(1, HW, HW)
    fg[..., HW // 2:] = 1.0
    if kind == "bad":
        qry, label = torch.full((1, 3, HW, HW), 2.0), torch.ones(1, HW, HW)
    else:
        qry = torch.randn(1, 3, HW, HW, generator=g)
        qry[..., HW // 2:, :] = 2.0
        label = torch.zeros(1, HW, HW)
        label[:, HW // 2:] = 1.0
    return sup, fg, qry, label


def _align_batch(kinds: list[str], first_index: int) -> dict:
    eps = [_align_episode(k, first_index + i) for i, k in enumerate(kinds)]
    sup, fg, qry, label = (torch.cat([e[j] for e in eps]) for j in range(4))
    return {"support_images": [[sup]], "support_mask": [[{"fg_mask": fg, "bg_mask": 1.0 - fg}]],
            "query_images": [qry], "query_labels": [label.long()],
            "index": torch.arange(first_index, first_index + len(kinds))}


def _align_step_body() -> dict:
    from models.builder import build_model
    from util.training import build_criterion, build_optimizer, build_scheduler, episode_errors, train_step
    info = D.init_distributed(0, force_cpu=True)
    cfg = {"model": {"align": True, "init_weights": "random", "which_model": "dlfcn_res18"},
           "optim": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
           "lr_milestones": [1000], "lr_step_gamma": 0.95}
    torch.manual_seed(0)
    model = build_model(cfg["model"])
    model.train()
    opt, before = build_optimizer(model, cfg), [p.detach().clone() for p in model.parameters()]
    sched = build_scheduler(opt, cfg)
    net = D.wrap_ddp(model, info)
    batch = _align_batch(["bad", "good"] if info.rank == 0 else ["good", "good"], 10 * info.rank)
    res = train_step(net, batch, opt, sched, criterion=build_criterion(use_wce=True, ignore_label=255,
                                                                        device=info.device),
                     device=info.device, skip_errors=episode_errors())
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"res": res, "failures": list(model.align_failures), "moved": moved,
            "weights": weights[:1000].tolist(), "sched_step": sched.last_epoch}


def test_failed_alignment_episode_does_not_skip_the_step_on_two_ranks():
    """Rank 0's first episode fails its alignment pass (a real EmptyPrototypeError condition:
    its query is predicted foreground everywhere); every other episode is good. The step is taken
    on both ranks with identical weights; rank 0 counts one zeroed alignment loss, and its other
    episode's alignment loss still counts."""
    out = run_ranks(_align_step_body, timeout=180)
    assert [r["failures"] for r in out] == [[0], []]
    assert [r["res"]["skipped"] for r in out] == [0.0, 0.0]
    assert [r["res"]["align_failed"] for r in out] == [1.0, 0.0]
    assert all(r["sched_step"] == 1 and r["moved"] > 0 for r in out)      # optimizer and scheduler stepped
    assert out[0]["weights"] == out[1]["weights"]                         # DDP: the same update
    assert out[0]["res"]["align_loss"] > 0 and out[1]["res"]["align_loss"] > 0
