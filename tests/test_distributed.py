"""util/distributed.py alone: launcher detection, errors, and 2 gloo ranks on the CPU."""
from __future__ import annotations

import pytest
import torch

from tests.disthelper import LAUNCH_VARS, run_ranks
from util import distributed as D


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


def test_slurm_variables(clean_env):
    clean_env.setenv("SLURM_PROCID", "11")
    clean_env.setenv("SLURM_NTASKS", "16")
    clean_env.setenv("SLURM_LOCALID", "3")
    assert D.launcher_name() == "slurm"
    assert D._launch_env() == (11, 16, 3)     # local rank from SLURM_LOCALID, not 11 % n_gpus


def test_slurm_single_task_is_one_process(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_LOCALID", "0")
    assert D.launcher_name() == "none"
    assert D.init_distributed(0, force_cpu=True).backend is None


def test_torchrun_inside_srun_uses_torchrun_values(clean_env):
    for var, value in {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
                       "RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "6"}.items():
        clean_env.setenv(var, value)
    assert D._launch_env() == (6, 16, 6)


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_missing_rendezvous_variable_is_named(clean_env, missing):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("SLURM_LOCALID", "0")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29999")
    clean_env.delenv(missing)
    with pytest.raises(RuntimeError, match=f"{missing} is not set.*srun"):
        D.init_distributed(0, force_cpu=True)
    assert not D.is_dist()


def test_malformed_variables_are_named(clean_env):
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
    assert D.wrap_ddp(model, info) is model and D.unwrap(model) is model
    t = torch.tensor([3, 4], dtype=torch.int64)
    assert D.all_reduce_sum(t) is t and t.tolist() == [3, 4]
    assert D.any_rank_flag(True) is True and D.any_rank_flag(False) is False
    assert D.broadcast_object({"a": 1}) == {"a": 1}


# ---- two gloo ranks --------------------------------------------------------------------------

def _collectives_body() -> dict:
    info = D.init_distributed(0, force_cpu=True)
    r = info.rank
    counts = D.all_reduce_sum(torch.tensor([[r + 1, 10 * r], [2**40, 0]], dtype=torch.int64))
    model = D.wrap_ddp(torch.nn.Linear(2, 1, bias=False), info)
    with torch.no_grad():
        D.unwrap(model).weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0]]) if r == 0 else torch.tensor([[3.0, 5.0]])
    (model(x) ** 2).sum().backward()
    return {
        "info": (info.rank, info.world_size, info.local_rank, str(info.device), info.backend),
        "helpers": (D.is_dist(), D.get_rank(), D.get_world_size(), D.is_main_process()),
        "counts": counts.tolist(), "dtype": str(counts.dtype),
        "flag_one": D.any_rank_flag(r == 1), "flag_none": D.any_rank_flag(False),
        "broadcast": D.broadcast_object(f"from rank {r}"),
        "grad": D.unwrap(model).weight.grad.tolist(),
        "unwrapped_keys": sorted(D.unwrap(model).state_dict()),
    }


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_gloo_ranks(launcher):
    out = run_ranks(_collectives_body, launcher=launcher)
    for rank, res in enumerate(out):
        assert res["info"] == (rank, 2, rank, "cpu", "gloo")
        assert res["helpers"] == (True, rank, 2, rank == 0)
        # sum over ranks: [[1+2, 0+10], [2^41, 0]], exact in int64
        assert res["counts"] == [[3, 10], [2**41, 0]] and res["dtype"] == "torch.int64"
        assert res["flag_one"] is True and res["flag_none"] is False
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
