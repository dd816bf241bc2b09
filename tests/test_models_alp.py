"""models/alpmodule.py: the ALP classifier on tiny hand-computed cases (SPEC §4)."""
from __future__ import annotations

import math

import pytest
import torch

from models.alpmodule import EmptyPrototypeError, MultiProtoAsConv
from models.grid_proto_fewshot import FewShotSeg

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def _support() -> tuple[torch.Tensor, torch.Tensor]:
    """1 shot, C = 2, 4 x 4 features: rows 0-1 hold e1, rows 2-3 hold e2; the mask covers the
    left half (columns 0-1). With 2 x 2 pooling the left cells are prototypes e1 (top) and e2
    (bottom); the right cells have pooled mask 0."""
    x = torch.zeros(1, 2, 4, 4)
    x[0, :, :2, :] = torch.tensor(E1)[:, None, None]
    x[0, :, 2:, :] = torch.tensor(E2)[:, None, None]
    y = torch.zeros(1, 1, 4, 4)
    y[..., :2] = 1.0
    return x, y


def _query(*vectors: list[float]) -> torch.Tensor:
    """Bq x 2 x 1 x 1 queries (one pixel each)."""
    return torch.tensor(vectors)[:, :, None, None]


def _alp(ds: list[float]) -> float:
    """sum_k softmax_k(d) d_k."""
    z = sum(math.exp(d) for d in ds)
    return sum(math.exp(d) / z * d for d in ds)


CLS = MultiProtoAsConv(proto_grid=[2, 2], feature_hw=[4, 4])  # training window 2 x 2


@pytest.mark.parametrize("isval", [True, False], ids=["val-window-2", "train-window-4/2"])
def test_gridconv_hand_computed(isval: bool) -> None:
    x, y = _support()
    q = _query([1.0, 0.0], [3.0, 1.0], [1.0, 1.0])
    out = CLS(q, x, y, mode="gridconv", thresh=0.95, isval=isval, val_wsize=2)
    # prototypes e1, e2: d = 20 * cos
    r10 = math.sqrt(10)
    expected = [_alp([20.0, 0.0]), _alp([20 * 3 / r10, 20 * 1 / r10]),
                _alp([20 / math.sqrt(2)] * 2)]
    assert out.score.shape == (3, 1, 1, 1)
    assert torch.allclose(out.score.flatten(), torch.tensor(expected), rtol=1e-5)
    assert out.proto_assign.flatten().tolist()[:2] == [0.0, 0.0]  # both closer to e1 (first)


def test_gridconv_plus_adds_global_prototype() -> None:
    x, y = _support()
    q = _query([3.0, 1.0])
    out = CLS(q, x, y, mode="gridconv+", thresh=0.95, isval=True, val_wsize=2)
    # global prototype: (4 e1 + 4 e2) / (8 + 1e-5) -> direction (1, 1) / sqrt 2
    r10 = math.sqrt(10)
    ds = [20 * 3 / r10, 20 / r10, 20 * 4 / (r10 * math.sqrt(2))]
    assert out.score.item() == pytest.approx(_alp(ds), rel=1e-5)
    assert out.proto_assign.item() == 0.0


def test_mask_mode_averages_shots() -> None:
    x1, y = _support()                     # shot 1: global prototype (0.5, 0.5)
    x2 = torch.zeros_like(x1)
    x2[:, 0] = 3.0                         # shot 2: 3 e1 everywhere, global prototype (3, 0)
    x = torch.cat([x1, x2])
    y = y.repeat(2, 1, 1, 1)
    out = CLS(_query([1.0, 2.0]), x, y, mode="mask", thresh=0.95, isval=True, val_wsize=2)
    # mean prototype (1.75, 0.25) (up to 1e-5 relative); cos with (1, 2)
    cos = (1.75 + 0.5) / (math.sqrt(5) * math.hypot(1.75, 0.25))
    assert out.score.item() == pytest.approx(20 * cos, rel=1e-5)
    assert out.proto_assign is None


def test_threshold_is_strict_and_empty_raises() -> None:
    x, _ = _support()
    y = torch.full((1, 1, 4, 4), 0.95)     # pooled 0.95 is not > 0.95
    with pytest.raises(EmptyPrototypeError, match="above 0.95") as err:
        CLS(_query(E1), x, y, mode="gridconv", thresh=0.95, isval=True, val_wsize=2)
    assert err.value.max_pooled == pytest.approx(0.95)
    # gridconv+ never lacks a prototype: the global one remains (20 * cos(e1, e1/2 + e2/2))
    out = CLS(_query(E1), x, y, mode="gridconv+", thresh=0.95, isval=True, val_wsize=2)
    assert out.score.item() == pytest.approx(20 / math.sqrt(2), rel=1e-5)


def test_norm_floor() -> None:
    """A zero query has norm floored at 1e-4: every similarity is 0, so the score is 0."""
    x, y = _support()
    out = CLS(torch.zeros(1, 2, 1, 1), x, y, mode="gridconv", thresh=0.95, isval=True,
              val_wsize=2)
    assert out.score.item() == 0.0


def test_fg_mode_choice() -> None:
    """'gridconv+' iff the 4 x 4 average-pooled mask reaches 0.95 (cells aligned to 4)."""
    m = torch.zeros(1, 1, 8, 8)
    m[..., 4:8, 0:4] = 1.0                 # one full aligned 4 x 4 cell
    assert FewShotSeg._fg_mode(m) == "gridconv+"
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1.0                 # same area, straddling 4 cells: each pooled 0.25
    assert FewShotSeg._fg_mode(m) == "mask"


def test_bad_mode_and_window() -> None:
    x, y = _support()
    with pytest.raises(ValueError, match="mode='grid'"):
        CLS(_query(E1), x, y, mode="grid", thresh=0.95)
    with pytest.raises(ValueError, match="val_wsize is required"):
        CLS(_query(E1), x, y, mode="gridconv", thresh=0.95, isval=True)
    with pytest.raises(ValueError, match="feature_hw"):
        MultiProtoAsConv(proto_grid=[8, 8], feature_hw=[4, 4])
