"""models/alpmodule.py: the ALP classifier on tiny hand-computed cases (SPEC §4), one episode
(the reference's 1x1-convolution path) and several at once (the masked path)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


# ---- full float32 head ---------------------------------------------------------------------

def _random_episodes(n_ep: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n_ep episodes of 2 queries and 2 shots, C = 16, 8 x 8 features; the support masks cover a
    random 4 x 4-aligned block each (so every episode has local prototypes with window 4).
    Returns (E x 2 x 16 x 8 x 8 queries, E x 2 x 16 x 8 x 8 support, E x 2 x 1 x 8 x 8 masks)."""
    g = torch.Generator().manual_seed(seed)
    qry = torch.randn(n_ep, 2, 16, 8, 8, generator=g)
    sup = torch.randn(n_ep, 2, 16, 8, 8, generator=g)
    mask = torch.zeros(n_ep, 2, 1, 8, 8)
    for e in range(n_ep):
        for s in range(2):
            r, c = (torch.randint(0, 2, (2,), generator=g) * 4).tolist()
            mask[e, s, 0, r:r + 4, c:c + 4] = 1.0
    return qry, sup, mask


@pytest.mark.parametrize("mode", ["gridconv", "gridconv+"])
def test_one_episode_conv_path_equals_batched_einsum_path(mode: str) -> None:
    """Each episode alone (1x1 convolution over its valid prototypes) equals its row of the
    batch (einsum over every cell, invalid ones masked out of the softmax)."""
    head = MultiProtoAsConv(proto_grid=[2, 2], feature_hw=[8, 8])
    qry, sup, mask = _random_episodes(3)
    batched = head(qry, sup, mask, mode=mode, thresh=0.95)
    for e in range(3):
        alone = head(qry[e:e + 1], sup[e:e + 1], mask[e:e + 1], mode=mode, thresh=0.95)
        torch.testing.assert_close(alone.score[0], batched.score[e], rtol=1e-5, atol=1e-5)
        assert torch.equal(alone.proto_assign[0], batched.proto_assign[e])
    assert batched.score.std() > 1.0                      # not a degenerate (constant) case


def test_head_is_float32_under_bf16_autocast() -> None:
    head = MultiProtoAsConv(proto_grid=[2, 2], feature_hw=[8, 8])
    qry, sup, mask = _random_episodes(2, seed=1)
    exact = head(qry, sup, mask, mode="gridconv", thresh=0.95)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(qry.bfloat16(), sup.bfloat16(), mask, mode="gridconv", thresh=0.95)
        single = head(qry[:1].bfloat16(), sup[:1].bfloat16(), mask[:1], mode="gridconv", thresh=0.95)
    assert out.score.dtype == torch.float32 and single.score.dtype == torch.float32
    # only the inputs' rounding to bf16 differs (8 bits of mantissa: about 1e-2 relative)
    torch.testing.assert_close(out.score, exact.score, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(single.score[0], out.score[0], rtol=1e-5, atol=1e-5)


def _tf32_state() -> tuple:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    return conv.fp32_precision, matmul.fp32_precision


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="this torch has only the allow_tf32 flags (torch < 2.9)")
@pytest.mark.parametrize("n_ep", [1, 2], ids=["conv2d-path", "einsum-path"])
def test_head_turns_tf32_off_inside_and_restores_it(monkeypatch, n_ep: int) -> None:
    """What the GPU kernels would see: inside the head TF32 is off ('ieee': full float32) for
    cuDNN convolutions and matrix products; the caller's setting is back afterwards."""
    seen = []
    real_conv, real_einsum = F.conv2d, torch.einsum

    def conv_spy(*args, **kwargs):
        seen.append(("conv2d", _tf32_state()))
        return real_conv(*args, **kwargs)

    def einsum_spy(*args, **kwargs):
        seen.append(("einsum", _tf32_state()))
        return real_einsum(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", conv_spy)
    monkeypatch.setattr(torch, "einsum", einsum_spy)
    before = _tf32_state()
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"     # as NVIDIA's default for convolutions
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        head = MultiProtoAsConv(proto_grid=[2, 2], feature_hw=[8, 8])
        qry, sup, mask = _random_episodes(n_ep)
        head(qry, sup, mask, mode="gridconv", thresh=0.95)
        assert seen == [("conv2d" if n_ep == 1 else "einsum", ("ieee", "ieee"))]
        assert _tf32_state() == ("tf32", "tf32")
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


# ---- alignment pass: a failing episode among good ones -------------------------------------

@pytest.fixture(scope="module")
def res18() -> FewShotSeg:
    torch.manual_seed(0)
    return FewShotSeg(cfg={"align": True, "init_weights": "random", "which_model": "dlfcn_res18",
                           "proto_grid_size": 4, "feature_hw": [16, 16]})


def test_failed_alignment_episode_counts_zero_and_the_others_count(res18: FewShotSeg) -> None:
    """Batch of 3: item 1's query is predicted foreground everywhere (no background prototype in
    its alignment pass). Its loss is 0, the mean is over all 3 items, items 0 and 2 give what
    they give alone, and gradients reach their features but not item 1's."""
    g = torch.Generator().manual_seed(3)
    qry = torch.randn(3, 32, 16, 16, generator=g, requires_grad=True)
    supp = torch.randn(1, 3, 32, 16, 16, generator=g)
    scores = torch.zeros(3, 2, 16, 16)
    scores[:, 1, :, 8:] = 1.0               # items 0, 2: foreground on the right half only
    scores[1, 1] = 1.0                      # item 1: foreground everywhere
    fg = torch.zeros(1, 3, 64, 64)
    fg[..., :32, :] = 1.0
    loss, failed = res18._alignment_loss(qry, scores, supp, fg, 1 - fg)
    assert failed == [1]
    alone = [res18._alignment_loss(qry[i:i + 1], scores[i:i + 1], supp[:, i:i + 1], fg[:, i:i + 1],
                                   1 - fg[:, i:i + 1]) for i in (0, 2)]
    assert [f for _, f in alone] == [[], []] and all(a.item() > 0 for a, _ in alone)
    torch.testing.assert_close(loss, (alone[0][0] + alone[1][0]) / 3, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, qry)
    assert grad[1].abs().max() == 0 and grad[0].abs().max() > 0 and grad[2].abs().max() > 0
