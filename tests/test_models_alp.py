"""models/alpmodule.py: the ALP classifier on tiny hand-computed cases (SPEC §4), one episode
(the reference's 1x1-convolution path) and several at once (the masked path)."""
from __future__ import annotations

import math

import pytest
import torch

from models.alpmodule import EmptyPrototypeError, MultiProtoAsConv
from models.grid_proto_fewshot import FewShotSeg

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def _support() -> tuple[torch.Tensor, torch.Tensor]:
    """1 episode, 1 shot, C = 2, 4 x 4 features: rows 0-1 hold e1, rows 2-3 hold e2; the mask
    covers the left half (columns 0-1). With 2 x 2 pooling the left cells are prototypes e1
    (top) and e2 (bottom); the right cells have pooled mask 0.
    Returns (1 x 1 x 2 x 4 x 4 features, 1 x 1 x 1 x 4 x 4 mask)."""
    x = torch.zeros(1, 1, 2, 4, 4)
    x[..., :, :2, :] = torch.tensor(E1)[:, None, None]
    x[..., :, 2:, :] = torch.tensor(E2)[:, None, None]
    y = torch.zeros(1, 1, 1, 4, 4)
    y[..., :2] = 1.0
    return x, y


def _query(*vectors: list[float]) -> torch.Tensor:
    """1 x Q x 2 x 1 x 1: one episode of one-pixel queries."""
    return torch.tensor(vectors)[None, :, :, None, None]


def _alp(ds: list[float]) -> float:
    """sum_k softmax_k(d) d_k."""
    z = sum(math.exp(d) for d in ds)
    return sum(math.exp(d) / z * d for d in ds)


CLS = MultiProtoAsConv(proto_grid=[2, 2], feature_hw=[4, 4])  # training window 2 x 2
R10 = math.sqrt(10)
# queries e1, (3, 1), (1, 1) against prototypes e1, e2: d = 20 cos
GRIDCONV_EXPECTED = [_alp([20.0, 0.0]), _alp([20 * 3 / R10, 20 / R10]),
                     _alp([20 / math.sqrt(2)] * 2)]


@pytest.mark.parametrize("isval", [True, False], ids=["val-window-2", "train-window-4/2"])
def test_gridconv_hand_computed(isval: bool) -> None:
    x, y = _support()
    q = _query([1.0, 0.0], [3.0, 1.0], [1.0, 1.0])
    out = CLS(q, x, y, mode="gridconv", thresh=0.95, isval=isval, val_wsize=2)
    assert out.score.shape == (1, 3, 1, 1)
    assert torch.allclose(out.score.flatten(), torch.tensor(GRIDCONV_EXPECTED), rtol=1e-5)
    assert out.proto_assign.flatten().tolist() == [0.0, 0.0, 0.0]  # e1 first (ties: first)


def test_several_episodes_masked_path() -> None:
    """Episode 0 as above; episode 1 has a mask on the bottom-right cell only (prototype e2):
    together they give each episode's own values, assignments index each episode's list."""
    x, y = _support()
    y1 = torch.zeros_like(y)
    y1[..., 2:, 2:] = 1.0
    q = _query([1.0, 0.0], [3.0, 1.0], [1.0, 1.0])
    out = CLS(q.repeat(2, 1, 1, 1, 1), x.repeat(2, 1, 1, 1, 1), torch.cat([y, y1]),
              mode="gridconv", thresh=0.95, isval=True, val_wsize=2, vis_sim=True)
    assert torch.allclose(out.score[0].flatten(), torch.tensor(GRIDCONV_EXPECTED), rtol=1e-5)
    # one prototype e2: softmax of one value is 1, the score is d = 20 cos(q, e2)
    expected1 = [0.0, 20 / R10, 20 / math.sqrt(2)]
    assert torch.allclose(out.score[1].flatten(), torch.tensor(expected1), rtol=1e-5, atol=1e-6)
    assert out.proto_assign[1].flatten().tolist() == [0.0, 0.0, 0.0]
    assert [s.shape[1] for s in out.raw_sims] == [2, 1]


def test_gridconv_plus_adds_global_prototype() -> None:
    x, y = _support()
    out = CLS(_query([3.0, 1.0]), x, y, mode="gridconv+", thresh=0.95, isval=True, val_wsize=2)
    # global prototype: (4 e1 + 4 e2) / (8 + 1e-5) -> direction (1, 1) / sqrt 2
    ds = [20 * 3 / R10, 20 / R10, 20 * 4 / (R10 * math.sqrt(2))]
    assert out.score.item() == pytest.approx(_alp(ds), rel=1e-5)
    assert out.proto_assign.item() == 0.0


def test_mask_mode_averages_shots() -> None:
    x1, y = _support()                     # shot 1: global prototype (0.5, 0.5)
    x2 = torch.zeros_like(x1)
    x2[:, :, 0] = 3.0                      # shot 2: 3 e1 everywhere, global prototype (3, 0)
    x = torch.cat([x1, x2], dim=1)         # 1 episode x 2 shots
    y = y.repeat(1, 2, 1, 1, 1)
    out = CLS(_query([1.0, 2.0]), x, y, mode="mask", thresh=0.95, isval=True, val_wsize=2)
    # mean prototype (1.75, 0.25) (up to 1e-5 relative); cos with (1, 2)
    cos = (1.75 + 0.5) / (math.sqrt(5) * math.hypot(1.75, 0.25))
    assert out.score.item() == pytest.approx(20 * cos, rel=1e-5)
    assert out.proto_assign is None


def test_threshold_is_strict_and_empty_raises() -> None:
    x, y = _support()
    y_flat = torch.full((1, 1, 1, 4, 4), 0.95)  # pooled 0.95 is not > 0.95
    with pytest.raises(EmptyPrototypeError, match=r"episode\(s\) \[1\].*above 0.95") as err:
        CLS(_query(E1).repeat(2, 1, 1, 1, 1), x.repeat(2, 1, 1, 1, 1), torch.cat([y, y_flat]),
            mode="gridconv", thresh=0.95, isval=True, val_wsize=2)
    assert err.value.episodes == [1] and err.value.max_pooled == pytest.approx(0.95)
    # gridconv+ never lacks a prototype: the global one remains (20 * cos(e1, e1/2 + e2/2))
    out = CLS(_query(E1), x, y_flat, mode="gridconv+", thresh=0.95, isval=True, val_wsize=2)
    assert out.score.item() == pytest.approx(20 / math.sqrt(2), rel=1e-5)


def test_norm_floor() -> None:
    """A zero query has norm floored at 1e-4: every similarity is 0, so the score is 0."""
    x, y = _support()
    out = CLS(torch.zeros(1, 1, 2, 1, 1), x, y, mode="gridconv", thresh=0.95, isval=True,
              val_wsize=2)
    assert out.score.item() == 0.0


def test_fg_mode_choice() -> None:
    """'gridconv+' iff the 4 x 4 average-pooled mask reaches 0.95 (cells aligned to 4)."""
    m = torch.zeros(2, 1, 1, 8, 8)
    m[0, ..., 4:8, 0:4] = 1.0              # one full aligned 4 x 4 cell
    m[1, ..., 2:6, 2:6] = 1.0              # same area, straddling 4 cells: each pooled 0.25
    assert FewShotSeg._fg_modes(m) == ["gridconv+", "mask"]


def test_bad_mode_and_window() -> None:
    x, y = _support()
    with pytest.raises(ValueError, match="mode='grid'"):
        CLS(_query(E1), x, y, mode="grid", thresh=0.95)
    with pytest.raises(ValueError, match="val_wsize is required"):
        CLS(_query(E1), x, y, mode="gridconv", thresh=0.95, isval=True)
    with pytest.raises(ValueError, match="feature_hw"):
        MultiProtoAsConv(proto_grid=[8, 8], feature_hw=[4, 4])
