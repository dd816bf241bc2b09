"""The training loop (SPEC.md §5, §8; STYLE.md §2) with a small stand-in model, so every rule
is checked in a fraction of a second per step: losses, schedule, exact step count, snapshots,
interval means, exact resume, stop signals, skipped episodes and non-finite losses."""
from __future__ import annotations

import copy
import logging
import os
import re
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import util.training as trainer
import util.training.loop as training_loop
from config_ssl_upload import ex
from tests.tinydata import build_tiny_dataset
from util.checkpoint import read_snapshot
from util.distributed import DistInfo
from util.experiment.config_check import check_config

CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)


class FakeEpisodeError(RuntimeError):
    """Stands in for the model's explicit empty-prototype error."""


class FakeFewShot(nn.Module):
    """FewShotSeg's interface: masked-average prototypes on a 2-conv encoder (with BatchNorm),
    cosine logits, a PANet-style alignment loss. ``fail_calls``: forward calls (1-based) that
    raise FakeEpisodeError; ``nan_calls``: calls whose logits are NaN."""

    def __init__(self, fail_calls=(), nan_calls=()):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.Conv2d(4, 4, 3, padding=1))
        self.fail_calls, self.nan_calls, self.calls = set(fail_calls), set(nan_calls), 0

    @staticmethod
    def _logits(fts, fg, bg):
        protos = [(fts * m[:, None]).sum((2, 3)) / (m[:, None].sum((2, 3)) + 1e-5) for m in (bg, fg)]
        return torch.stack([F.cosine_similarity(fts, p[..., None, None], dim=1) * 20 for p in protos], 1)

    def forward(self, supp_imgs, fore_mask, back_mask, qry_imgs, isval, val_wsize, show_viz=False):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise FakeEpisodeError(f"call {self.calls}")
        s, q = supp_imgs[0][0], qry_imgs[0]
        fts = self.encoder(torch.cat([s, q]))
        pred = self._logits(fts[s.shape[0]:], fore_mask[0][0], back_mask[0][0])
        if self.calls in self.nan_calls:
            pred = pred * float("nan")
        qm = pred.argmax(1)
        back = self._logits(fts[:s.shape[0]], (qm == 1).float(), (qm == 0).float())
        return pred, F.cross_entropy(back, fore_mask[0][0].long()), None, None


class FakeRun:
    def __init__(self):
        self.scalars, self.info = {}, {}

    def log_scalar(self, name, value, step):
        self.scalars.setdefault(name, []).append((step, value))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", hw=32, depth=3,
                              block=8)


def config(tiny, **updates):
    fixed = {"num_workers": 0, "seed": 5, "deterministic": True, "n_steps": 6, "print_interval": 2,
             "save_snapshot_every": 3, "exclude_cls_list": [], "min_fg_data": 1,
             "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005}}
    fixed.update(updates)
    cfg = copy.deepcopy(dict(ex.configurations[0](fixed=fixed)))
    cfg["path"]["CHAOST2_Superpix"] = {"data_dir": str(tiny.data_dir)}
    return cfg


def run_train(cfg, run_dir, run=None, exp_dir=None, **model_kw):
    """``train`` with a FakeFewShot built by the trainer (after it seeded torch)."""
    s = check_config(cfg)
    built = []

    def factory(model_cfg, *, pretrained):
        built.append(FakeFewShot(**model_kw))
        return built[0]

    res = trainer.train(cfg, card=s.card, data_dir=s.data_dir, train_ids=s.train_ids, info=CPU, run=run,
                        run_dir=run_dir, experiment_dir=exp_dir, model_factory=factory)
    return res, built[0]


def test_weighted_cross_entropy_by_hand():
    crit = trainer.build_criterion(use_wce=True, ignore_label=255, device=torch.device("cpu"))
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])      # 1 x 2 x 1 x 3
    labels = torch.tensor([[[0, 1, 255]]])
    total, query, align = trainer.loss(logits, labels, torch.tensor(0.25), crit)
    l0 = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]               # pixel 0, class 0
    l1 = -torch.log_softmax(torch.tensor([0.0, 1.0]), 0)[1]               # pixel 1, class 1
    want = (0.05 * l0 + 1.0 * l1) / (0.05 + 1.0)                         # pixel 2 ignored
    assert query.item() == pytest.approx(want.item(), rel=1e-6)
    assert total.item() == pytest.approx(want.item() + 0.25, rel=1e-6) and align.item() == 0.25
    plain = trainer.build_criterion(use_wce=False, ignore_label=255, device=torch.device("cpu"))
    assert trainer.loss(logits, labels, 0.0, plain)[1].item() == pytest.approx(((l0 + l1) / 2).item())


def test_optimizer_and_schedule(tiny):
    assert config(tiny, n_steps=3500)["lr_milestones"] == [1000, 2000]   # every 1000 (SPEC §8)
    assert config(tiny, n_steps=100100)["lr_milestones"][-1] == 99000     # range(n // 1000 - 1)
    cfg = config(tiny, lr_milestones=[3, 5], lr_step_gamma=0.5)
    p = nn.Parameter(torch.zeros(1))
    opt = trainer.build_optimizer(nn.ParameterList([p]), cfg)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 0.0005
    sch = trainer.build_scheduler(opt, cfg)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == [0.05, 0.05, 0.05, 0.025, 0.025, 0.0125]


def test_steps_snapshots_interval_means_and_curves(tiny, tmp_path, caplog):
    cfg = config(tiny, n_steps=7, print_interval=3, save_snapshot_every=3)
    run = FakeRun()
    with caplog.at_level(logging.INFO, logger="util.training"):
        res, _ = run_train(cfg, tmp_path / "run", run=run)
    assert res["status"] == "completed" and res["step"] == 7
    snaps = sorted(int(p.stem) for p in (tmp_path / "run" / "snapshots").glob("*.pth"))
    assert snaps == [3, 6, 7]                                     # N.pth after N steps + final
    snap = read_snapshot(tmp_path / "run" / "snapshots" / "7.pth")
    assert snap["step"] == 7 and snap["lr_scheduler"]["last_epoch"] == 7
    assert snap["config"]["n_steps"] == 7 and snap["rng"]["stream"]["next_episode"] == 7
    losses = [v for _, v in run.scalars["loss"]]
    aligns = [v for _, v in run.scalars["align_loss"]]
    assert [s for s, _ in run.scalars["loss"]] == list(range(1, 8))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 3                                        # steps 3, 6 and the last, 7
    for line, (lo, hi) in zip(lines, ((0, 3), (3, 6), (6, 7))):   # true means of the interval
        m = re.fullmatch(r"step (\d+): loss: (\S+), align_loss: (\S+),", line)
        assert int(m.group(1)) == hi
        assert float(m.group(2)) == pytest.approx(sum(losses[lo:hi]) / (hi - lo))
        assert float(m.group(3)) == pytest.approx(sum(aligns[lo:hi]) / (hi - lo))
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000
    assert run.info["training"]["step"] == 7
    assert run.info["snapshots"] == [{"step": s, "path": str(tmp_path / "run" / "snapshots" / f"{s}.pth")}
                                     for s in (3, 6, 7)]          # info.json: every save, in order


def params_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_is_bit_identical(tiny, tmp_path):
    full_cfg = config(tiny, n_steps=6, lr_milestones=[2, 4])
    _, full = run_train(full_cfg, tmp_path / "full")
    half = config(tiny, n_steps=3, lr_milestones=[2, 4])
    run_train(half, tmp_path / "exp" / "1")
    res, resumed = run_train(config(tiny, n_steps=6, lr_milestones=[2, 4], resume=True),
                             tmp_path / "exp" / "2", exp_dir=tmp_path / "exp")
    assert res["step"] == 6
    a, b = params_of(full), params_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = read_snapshot(tmp_path / "full" / "snapshots" / "6.pth")["optimizer"]["state"]
    sb = read_snapshot(tmp_path / "exp" / "2" / "snapshots" / "6.pth")["optimizer"]["state"]
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    assert trainer.find_resume_snapshot(tmp_path / "exp").name == "6.pth"


def test_stop_signal_saves_after_the_step_and_resume_continues(tiny, tmp_path, monkeypatch):
    _, full = run_train(config(tiny, n_steps=5), tmp_path / "full")
    real_step, calls = training_loop.train_step, []

    def step_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)                  # arrives during step 2
        return real_step(*args, **kw)

    monkeypatch.setattr(training_loop, "train_step", step_then_signal)
    res, _ = run_train(config(tiny, n_steps=5), tmp_path / "exp" / "1")
    monkeypatch.setattr(training_loop, "train_step", real_step)
    assert res["status"] == "stopped" and res["step"] == 2       # stops after the current step
    assert res["stopped_by"] == "SIGUSR1" and res["resume_from"] == res["snapshot"]
    assert res["snapshot"].endswith("2.pth") and res["n_steps"] == 5
    done, resumed = run_train(config(tiny, n_steps=5, resume_from=res["snapshot"]), tmp_path / "exp" / "2")
    assert done["status"] == "completed" and done["step"] == 5
    a, b = params_of(full), params_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_episodes_are_skipped_and_counted(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(training_loop, "episode_errors", lambda: (FakeEpisodeError,))
    res, model = run_train(config(tiny, n_steps=4, save_snapshot_every=10),
                           tmp_path / "run", fail_calls={2, 3})
    assert res["step"] == 4 and res["skipped_episodes"] == 2 and res["episodes_drawn"] == 6
    snap = read_snapshot(tmp_path / "run" / "snapshots" / "4.pth")
    assert snap["lr_scheduler"]["last_epoch"] == 4               # stepped only after good batches
    with pytest.raises(FakeEpisodeError):                        # other errors are not swallowed
        monkeypatch.setattr(training_loop, "episode_errors", lambda: ())
        run_train(config(tiny, n_steps=2), tmp_path / "run2", fail_calls={1})


def test_non_finite_loss_stops_and_keeps_last_good_snapshot(tiny, tmp_path):
    with pytest.raises(trainer.NonFiniteLossError, match=r"step 3\b.*2\.pth"):
        run_train(config(tiny, n_steps=6, save_snapshot_every=2), tmp_path / "run",
                  nan_calls={3})
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").glob("*.pth")) == ["2.pth"]


def test_resume_rejects_foreign_and_bare_checkpoints(tiny, tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"encoder.0.weight": torch.zeros(4, 3, 3, 3), "head.w": torch.zeros(1)},
                "step": 1}, foreign)
    with pytest.raises(ValueError, match="head.w"):
        run_train(config(tiny, resume_from=str(foreign)), tmp_path / "a")
    bare = tmp_path / "bare.pth"
    torch.save(FakeFewShot().state_dict(), bare)
    with pytest.raises(ValueError, match="reload_model_path"):
        run_train(config(tiny, resume_from=str(bare)), tmp_path / "b")


# ------------------------------------------------------------------ the real FewShotSeg

SMALL_HW = 64                       # ResNet-18 at output stride 8: 8 x 8 features
BF16_LOGIT_TOL = 1.0                # logits are 20 x a cosine: bf16 keeps ~3 significant digits
BF16_ARGMAX_AGREEMENT = 0.97
BF16_LOSS_RTOL = 0.05
SMALL_MODEL = {"which_model": "dlfcn_res18", "init_weights": "random", "align": True,
               "feature_hw": [SMALL_HW // 8] * 2, "proto_grid_size": 4}


def small_fewshot():
    from models.grid_proto_fewshot import FewShotSeg

    torch.manual_seed(0)
    return FewShotSeg(in_channels=3, cfg=SMALL_MODEL)


def small_episode(seed: int = 0) -> dict:
    """A collated 1-way 1-shot episode (B = 1): smooth noise with a bright square organ, the
    square shifted in the query."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.randn(1, 1, 8, 8, generator=g), size=(SMALL_HW, SMALL_HW), mode="bilinear")
    fg = torch.zeros(1, SMALL_HW, SMALL_HW)
    fg[:, 16:40, 20:44] = 1.0
    img = img + fg[:, None]
    qry, qlab = torch.roll(img, (4, 4), (2, 3)), torch.roll(fg, (4, 4), (1, 2)).long()
    return {"support_images": [[img.repeat(1, 3, 1, 1)]],
            "support_mask": [[{"fg_mask": fg, "bg_mask": 1.0 - fg}]],
            "query_images": [qry.repeat(1, 3, 1, 1)], "query_labels": [qlab], "index": torch.tensor([seed])}


def test_bf16_runs_the_encoder_in_bf16_and_the_head_in_fp32():
    """precision='bf16' in the real training step: the encoder's activations are bf16 (autocast
    really on), the prototype head returns float32 (autocast off inside it), the weights stay
    float32, and the logits and losses are close to those of float32."""
    cfg = {"optim": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}, "lr_milestones": [1000],
           "lr_step_gamma": 0.95}
    seen: dict[str, list[torch.dtype]] = {"encoder": [], "head": []}
    results, logits = {}, {}
    for precision in ("fp32", "bf16"):
        model = small_fewshot().train()
        hooks = [model.encoder.register_forward_hook(lambda m, a, out: seen["encoder"].append(out.dtype)),  # noqa: B023
                 model.cls_unit.register_forward_hook(lambda m, a, out: seen["head"].append(out.score.dtype))]  # noqa: B023
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            ep = small_episode()
            logits[precision] = model(*trainer.episode_inputs(ep, torch.device("cpu"))[:4], isval=False,
                                      val_wsize=None)[0].float()
        opt = trainer.build_optimizer(model, cfg)
        results[precision] = trainer.train_step(model, small_episode(), opt, trainer.build_scheduler(opt, cfg),
                                                criterion=trainer.build_criterion(use_wce=True, ignore_label=255,
                                                                                  device=torch.device("cpu")),
                                                device=torch.device("cpu"), precision=precision)
        for h in hooks:
            h.remove()
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        assert seen["encoder"] and set(seen["encoder"]) == {expected}, (precision, seen["encoder"])
        assert seen["head"] and set(seen["head"]) == {torch.float32}, (precision, seen["head"])
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
        seen = {"encoder": [], "head": []}
    a, b = logits["fp32"], logits["bf16"]
    assert a.shape == (1, 2, SMALL_HW, SMALL_HW)
    assert (a - b).abs().max() < BF16_LOGIT_TOL, float((a - b).abs().max())
    assert (a.argmax(1) == b.argmax(1)).float().mean() > BF16_ARGMAX_AGREEMENT
    for key in ("loss", "align_loss"):
        assert results["bf16"][key] == pytest.approx(results["fp32"][key], rel=BF16_LOSS_RTOL), key
    assert (results["bf16"]["skipped"], results["fp32"]["skipped"]) == (0.0, 0.0)


def test_a_real_empty_prototype_error_skips_the_step(tiny, tmp_path, monkeypatch, caplog):
    """Episodes 1 and 2 get a support whose superpixel covers the whole slice (no background
    cell): the real FewShotSeg raises EmptyPrototypeError in the query pass, the real loop skips
    those batches without stepping the optimizer or the scheduler, and counts them."""
    real_build = training_loop.build_training_dataset
    broken = {1, 2}

    class WholeSliceSupport(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, index):
            item = self.inner[index]
            if int(index) in broken:
                for way in item["support_mask"]:
                    for shot in way:
                        shot["fg_mask"] = torch.ones_like(shot["fg_mask"])
                        shot["bg_mask"] = torch.zeros_like(shot["bg_mask"])
            return item

    monkeypatch.setattr(training_loop, "build_training_dataset", lambda *a, **k: WholeSliceSupport(real_build(*a, **k)))
    cfg = config(tiny, n_steps=3, save_snapshot_every=10)
    cfg["model"] = {**cfg["model"], **SMALL_MODEL, "feature_hw": [tiny.hw // 8] * 2}
    s = check_config(cfg)
    with caplog.at_level(logging.WARNING, logger="util.training"):
        res = trainer.train(cfg, card=s.card, data_dir=s.data_dir, train_ids=s.train_ids, info=CPU,
                            run_dir=tmp_path / "run")
    assert res["step"] == 3 and res["skipped_episodes"] == 2 and res["episodes_drawn"] == 5
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 2 and all("query" in m for m in skips), skips
    snap = read_snapshot(tmp_path / "run" / "snapshots" / "3.pth")
    assert snap["lr_scheduler"]["last_epoch"] == 3               # stepped only after good batches
    assert snap["optimizer"]["state"]                             # ... and the optimizer did step
