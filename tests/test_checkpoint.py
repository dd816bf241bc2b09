"""util/checkpoint.py: reading, strict ALPNet loading with named keys, snapshots, listing."""
from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from util.checkpoint import (
    SNAPSHOT_KEYS,
    latest_snapshot,
    list_snapshots,
    load_alpnet_weights,
    model_state_from,
    read_snapshot,
    save_snapshot,
    to_plain,
)


class Tiny(nn.Module):
    """Keys shaped like FewShotSeg's (``encoder.*``), small enough to build in microseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def _filled(seed: int) -> Tiny:
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.encoder[1].running_mean.normal_()
    return m


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bare_state_dict_loads(tmp_path: Path) -> None:
    src, dst = _filled(1), _filled(2)
    assert not _same_weights(src, dst)
    torch.save(src.state_dict(), tmp_path / "orig.pth")  # original checkpoints: a bare state_dict
    obj = load_alpnet_weights(dst, tmp_path / "orig.pth")
    assert _same_weights(src, dst)
    assert "encoder.0.weight" in obj


def test_module_prefix_stripped_and_wrapped_model(tmp_path: Path) -> None:
    src, dst = _filled(1), _filled(2)
    prefixed = OrderedDict(("module." + k, v) for k, v in src.state_dict().items())
    torch.save(prefixed, tmp_path / "dp.pth")
    load_alpnet_weights(nn.DataParallel(dst), tmp_path / "dp.pth")
    assert _same_weights(src, dst)


def test_snapshot_roundtrip(tmp_path: Path) -> None:
    src = _filled(3)
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1000, 2000], gamma=0.95)
    src(torch.ones(2, 3, 2, 2)).sum().backward()
    opt.step()
    sched.step()
    config = {"seed": 1234, "optim": {"lr": np.float64(0.1)}, "path": Path("/x/runs"),
              "exclude_cls_list": (2, 3)}
    rng = {"torch": torch.get_rng_state(), "np": np.arange(3, dtype=np.uint32)}
    out = save_snapshot(tmp_path / "snapshots" / "7.pth", model=nn.DataParallel(src),
                        optimizer=opt, scheduler=sched, step=7, rng=rng, config=config)
    assert out == tmp_path / "snapshots" / "7.pth"
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["7.pth"]  # no temporary left
    snap = read_snapshot(out)  # weights_only=True inside
    assert set(snap) == set(SNAPSHOT_KEYS)
    assert snap["step"] == 7 and snap["version"] == 1
    assert snap["config"] == {"seed": 1234, "optim": {"lr": 0.1}, "path": "/x/runs",
                              "exclude_cls_list": (2, 3)}
    assert type(snap["config"]["optim"]["lr"]) is float
    assert torch.equal(snap["rng"]["np"], torch.tensor([0, 1, 2], dtype=torch.uint32))
    assert not any(k.startswith("module.") for k in snap["model"])  # unwrapped
    assert snap["lr_scheduler"]["last_epoch"] == 1
    assert len(snap["optimizer"]["state"]) == 3  # momentum of conv weight, bn weight, bn bias
    # d(sum of outputs)/d(bn bias) = N * H * W = 2 * 2 * 2 per channel
    assert torch.equal(snap["optimizer"]["state"][2]["momentum_buffer"], torch.full((4,), 8.0))
    dst = _filled(4)
    load_alpnet_weights(dst, out)
    assert _same_weights(src, dst)


def test_to_plain_rejects_objects() -> None:
    with pytest.raises(TypeError, match=r"config\.optim\.fn"):
        to_plain({"optim": {"fn": object()}})


def test_foreign_keys_named(tmp_path: Path) -> None:
    state = _filled(1).state_dict()
    state["encoder.extra.weight"] = torch.zeros(1)
    del state["encoder.1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth") as err:
        load_alpnet_weights(_filled(2), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys (1): encoder.1.running_var" in msg
    assert "unexpected keys (1): encoder.extra.weight" in msg


def test_shape_mismatch_named(tmp_path: Path) -> None:
    state = _filled(1).state_dict()
    state["encoder.0.weight"] = torch.zeros(5, 3, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"encoder\.0\.weight \(file \(5, 3, 1, 1\), model "
                                         r"\(4, 3, 1, 1\)\)"):
        load_alpnet_weights(_filled(2), tmp_path / "shape.pth")


def test_not_alpnet_checkpoint(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(ValueError, match=r"linear.pth: not an ALPNet checkpoint.*weight, bias"):
        load_alpnet_weights(_filled(2), tmp_path / "linear.pth")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"PK\x03\x04truncated"],
                         ids=["empty", "text", "broken-zip"])
def test_unreadable_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "junk.pth").write_bytes(content)
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch checkpoint"):
        read_snapshot(tmp_path / "junk.pth")


def test_foreign_objects_refused(tmp_path: Path) -> None:
    """weights_only=True: a pickled arbitrary object is refused, not executed."""
    torch.save({"model": {}, "obj": Tiny}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="code.pth: not a readable PyTorch checkpoint"):
        read_snapshot(tmp_path / "code.pth")


def test_not_a_dict_and_missing(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: not a checkpoint: holds a list"):
        read_snapshot(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_snapshot(tmp_path / "nothere.pth")
    with pytest.raises(ValueError, match=r"x.pth: neither .*top-level keys: step, config"):
        model_state_from({"step": 3, "config": {}}, "x.pth")


def test_list_and_latest(tmp_path: Path) -> None:
    snaps = tmp_path / "snapshots"
    assert list_snapshots(snaps) == [] and latest_snapshot(snaps) is None  # absent folder
    snaps.mkdir()
    for name in ["1000.pth", "25000.pth", "2000.pth", ".3000.tmp12.pth", "best.pth", "9.pth.bak"]:
        (snaps / name).write_bytes(pickle.dumps(0))
    assert list_snapshots(snaps) == [(1000, snaps / "1000.pth"), (2000, snaps / "2000.pth"),
                                     (25000, snaps / "25000.pth")]  # numeric, not text order
    assert latest_snapshot(snaps) == snaps / "25000.pth"
