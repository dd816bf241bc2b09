"""FewShotSeg (dlfcn_res101) against the recorded outputs in ``tests/fixtures/alpnet/``:
state_dict keys, the three recorded cases, batches, the split inference, empty prototypes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.grid_proto_fewshot import EmptyPrototypeError, FewShotSeg
from tests.refnet import ALPNET_REF, fixture_state_dict, reference_keys

CASES = ["eval_128", "eval_large_fg", "train_large_fg"]
VAL_WSIZE = 2                     # tests/fixtures/README.md: isval=True, val_wsize=2
REL_TOL = 1e-4                    # tests/fixtures/README.md: logits to about 1e-4 relative
ALIGN_TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> FewShotSeg:
    """The fixture network, built once (init random: nothing looked up in the hub cache)."""
    torch.manual_seed(0)
    m = FewShotSeg(cfg={"align": True, "init_weights": "random", "which_model": "dlfcn_res101",
                        "cls_name": "grid_proto", "proto_grid_size": 8, "feature_hw": [32, 32]})
    m.load_state_dict(fixture_state_dict(), strict=True)
    return m


def _load(case: str) -> dict[str, np.ndarray]:
    with np.load(ALPNET_REF / f"{case}.npz") as d:
        return {k: d[k] for k in d.files}


def _inputs(d: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """(support 1 x 3 x H x W, query 1 x 3 x H x W, fg 1 x H x W, bg 1 x H x W)."""
    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a)[None, None].repeat(1, 3, 1, 1)

    return (img(d["support_image"]), img(d["query_image"]),
            torch.from_numpy(d["support_fg_mask"]).float()[None],
            torch.from_numpy(d["support_bg_mask"]).float()[None])


def _set_mode(m: nn.Module, mode: str) -> bool:
    """tests/fixtures/README.md: 'eval' = eval(); 'train' = train() with BatchNorm on running stats.
    Returns isval."""
    if mode == "eval":
        m.eval()
        return True
    m.train()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()
    return False


def _run(m: FewShotSeg, s, q, fg, bg, isval: bool) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        out = m([[s]], [[fg]], [[bg]], [q], isval=isval, val_wsize=VAL_WSIZE)
    return out[0].detach(), float(out[1].detach())


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff <= REL_TOL * expected.abs().max().item(), f"max abs diff {diff}"


def test_state_dict_keys_match_reference(model: FewShotSeg) -> None:
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = reference_keys()
    assert len(ref) == 663
    assert list(ours) == list(ref)          # names, in order
    assert ours == ref                      # and shapes


@pytest.mark.parametrize("case", CASES)
def test_reference_case(model: FewShotSeg, case: str) -> None:
    d = _load(case)
    isval = _set_mode(model, str(d["mode"]))
    pred, align = _run(model, *_inputs(d), isval)
    assert pred.shape == (1, 2, int(d["image_size"]), int(d["image_size"]))
    _assert_close(pred, torch.from_numpy(d["pred"]))
    assert abs(align - float(d["align_loss"])) <= ALIGN_TOL


def _episode2(d: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """A second, different episode: the reference case flipped (support left-right, query
    up-down)."""
    s, q, fg, bg = _inputs(d)
    return s.flip(-1), q.flip(-2), fg.flip(-1), bg.flip(-1)


def _pair(*episodes: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts) for parts in zip(*episodes))


@pytest.fixture(scope="module")
def eval_pair(model: FewShotSeg) -> dict[str, torch.Tensor]:
    """eval_128 and its flipped variant as one batch of 2, and the variant alone (eval)."""
    d = _load("eval_128")
    ep1, ep2 = _inputs(d), _episode2(d)
    _set_mode(model, "eval")
    s, q, fg, bg = _pair(ep1, ep2)
    with torch.no_grad():
        batch, _, sims, assign = model([[s]], [[fg]], [[bg]], [q], isval=True,
                                       val_wsize=VAL_WSIZE, show_viz=True)
    single2, _ = _run(model, *ep2, True)
    return {"batch": batch, "single2": single2, "expected1": torch.from_numpy(d["pred"]),
            "inputs": _pair(ep1, ep2), "sims": sims, "assign": assign}


def test_eval_batch_items_equal_batch_one(eval_pair: dict[str, torch.Tensor]) -> None:
    """Batch of 2 episodes: item 0 is the reference case, item 1 equals its batch-1 output."""
    _assert_close(eval_pair["batch"][:1], eval_pair["expected1"])
    _assert_close(eval_pair["batch"][1:], eval_pair["single2"])
    assert not torch.allclose(eval_pair["batch"][0], eval_pair["batch"][1])  # items differ


def test_split_inference_equals_forward(model: FewShotSeg,
                                        eval_pair: dict[str, torch.Tensor]) -> None:
    """encode + predict_from_features equals forward; a support of batch 1 is broadcast to
    every query exactly as the same support repeated per query."""
    s, q, fg, bg = eval_pair["inputs"]                 # 2 episodes
    _set_mode(model, "eval")
    with torch.no_grad():
        supp_fts = model.encode(s)[None]                # Sh(1) x Bs(2) x C x H' x W'
        qry_fts = model.encode(q)                       # 2 x C x H' x W'
        assert supp_fts.shape == (1, 2, 256, 16, 16)
        logits = model.predict_from_features(supp_fts, fg[None], bg[None], qry_fts,
                                             VAL_WSIZE, (128, 128))
        shared = model.predict_from_features(supp_fts[:, :1], fg[None, :1], bg[None, :1],
                                             qry_fts, VAL_WSIZE, (128, 128))
        repeated = model.predict_from_features(supp_fts[:, :1].expand(-1, 2, -1, -1, -1),
                                               fg[None, :1].expand(-1, 2, -1, -1),
                                               bg[None, :1].expand(-1, 2, -1, -1), qry_fts,
                                               VAL_WSIZE, (128, 128))
    _assert_close(logits, eval_pair["batch"])
    _assert_close(shared[:1], eval_pair["expected1"])
    _assert_close(shared, repeated)
    assert not torch.allclose(shared[1], logits[1])     # the support matters


def test_train_batch_align_loss_is_item_mean(model: FewShotSeg) -> None:
    """Training mode (BN on running stats), batch of 2: logits per item as batch 1, alignment
    loss the mean of the items' losses."""
    d = _load("eval_128")
    ep1, ep2 = _inputs(d), _episode2(d)
    _set_mode(model, "train")
    single1, align1 = _run(model, *ep1, False)
    single2, align2 = _run(model, *ep2, False)
    pred, align = _run(model, *_pair(ep1, ep2), False)
    _assert_close(pred[:1], single1)
    _assert_close(pred[1:], single2)
    assert abs(align - (align1 + align2) / 2) <= ALIGN_TOL
    assert abs(align1 - align2) > 1e-3                  # the mean is informative
    assert align1 > 0


def test_forward_outputs(eval_pair: dict) -> None:
    """show_viz: per support item, background similarities to its K local prototypes (at most
    8 x 8 cells) and foreground ones; the assignment indexes those prototypes."""
    bg_sims, fg_sims = eval_pair["sims"]
    assign = eval_pair["assign"]
    assert assign.shape == (2, 1, 16, 16)
    assert len(bg_sims) == len(fg_sims) == 2
    for b in range(2):
        n_proto = bg_sims[b].shape[1]
        assert 0 < n_proto <= 64 and assign[b].max() < n_proto
        assert torch.equal(bg_sims[b].argmax(dim=1).float(), assign[b])
        assert fg_sims[b].shape[0] == 1 and fg_sims[b].shape[-2:] == (16, 16)


def test_empty_background_raises(model: FewShotSeg) -> None:
    """A support whose background mask is empty has no local prototype: a named error."""
    torch.manual_seed(2)
    fg = torch.zeros(1, 1, 128, 128)
    fg[..., :64, :] = 1
    with torch.no_grad(), pytest.raises(EmptyPrototypeError, match="above 0.95") as err:
        model.predict_from_features(torch.randn(1, 1, 256, 16, 16), fg, torch.zeros_like(fg),
                                    torch.randn(3, 256, 16, 16), VAL_WSIZE, (128, 128))
    assert err.value.max_pooled == 0.0
    assert "query pass" in str(err.value)


def test_empty_query_background_in_alignment(model: FewShotSeg) -> None:
    """Alignment pass: a query predicted foreground everywhere has no background prototype: its
    alignment loss is 0 and it is listed (tests/test_models_alp.py: among good episodes)."""
    torch.manual_seed(1)
    qry_fts = torch.randn(1, 256, 16, 16)
    supp_fts = torch.randn(1, 1, 256, 16, 16)
    scores = torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])[None]  # fg wins everywhere
    fg = torch.zeros(1, 1, 128, 128)
    fg[..., :64, :] = 1
    loss, failed = model._alignment_loss(qry_fts, scores, supp_fts, fg, 1 - fg)
    assert failed == [0] and loss.item() == 0.0


def test_interface_errors(model: FewShotSeg) -> None:
    s = torch.zeros(1, 3, 64, 64)
    m = torch.zeros(1, 64, 64)
    with pytest.raises(ValueError, match="1 way and 1 query"):
        model([[s], [s]], [[m], [m]], [[m], [m]], [s], True, VAL_WSIZE)
    with pytest.raises(ValueError, match="support batch 2 must be 1 or the query batch 3"):
        model.predict_from_features(torch.zeros(1, 2, 256, 8, 8), torch.zeros(1, 2, 64, 64),
                                    torch.zeros(1, 2, 64, 64), torch.zeros(3, 256, 8, 8),
                                    VAL_WSIZE, (64, 64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model.encode(torch.zeros(1, 1, 64, 64))
