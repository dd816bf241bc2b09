"""The training loop's hooks one by one (util/training/hooks.py), on hand-made step sequences."""
from __future__ import annotations

import io
import logging

import pytest
import torch

from util.training.hooks import (
    EpochMessages,
    Hook,
    Hooks,
    IntervalLog,
    LossCurves,
    ProgressBar,
    SacredScalars,
    Snapshots,
    TensorBoardScalars,
)

HOOKS_LOG = "util.training.hooks"


def values(loss: float, align: float = 0.0) -> dict[str, float]:
    return {"loss": loss, "align_loss": align}


def test_interval_log_prints_true_means_every_interval_and_at_the_end(caplog):
    """every=2, n_steps=5: lines after steps 2 and 4 with the means of their two steps, and after
    step 5 with step 5 alone (the original divided by print_interval: 0.5 * 5.0 = 2.5 there)."""
    hook = IntervalLog(every=2, n_steps=5)
    with caplog.at_level(logging.INFO, logger=HOOKS_LOG):
        for step, (loss, align) in enumerate([(1.0, 0.1), (3.0, 0.3), (2.0, 0.0), (4.0, 1.0), (5.0, 0.5)], 1):
            hook.after_step(step, values(loss, align))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["step 2: loss: 2.0, align_loss: 0.2,", "step 4: loss: 3.0, align_loss: 0.5,",
                     "step 5: loss: 5.0, align_loss: 0.5,"]


def test_interval_log_at_a_stop_logs_the_open_interval_once(caplog):
    hook = IntervalLog(every=10, n_steps=100)
    with caplog.at_level(logging.INFO, logger=HOOKS_LOG):
        hook.after_step(1, values(1.0))
        hook.after_step(2, values(2.0))
        hook.on_stop(2)
        hook.on_stop(2)                 # nothing open any more: no second line
    assert [r.getMessage() for r in caplog.records] == ["step 2: loss: 1.5, align_loss: 0.0,"]


def test_snapshots_every_n_steps_at_the_end_and_at_a_stop():
    saved = []
    hook = Snapshots(every=3, n_steps=7, save=saved.append)
    for step in range(1, 8):
        hook.after_step(step, values(0.0))
    assert saved == [3, 6, 7] and hook.saved_at == 7
    hook.on_stop(7)                     # that step is saved already
    assert saved == [3, 6, 7]


def test_snapshots_at_a_stop_between_snapshots_and_after_a_resume():
    saved = []
    hook = Snapshots(every=10, n_steps=100, save=saved.append, saved_at=20)   # resumed at 20
    hook.on_stop(20)                    # stopped before any new step: 20.pth exists
    assert saved == []
    hook.after_step(21, values(0.0))
    hook.on_stop(21)
    assert saved == [21]


def test_sacred_scalars_per_step_and_none_off():
    class Run:
        def __init__(self):
            self.logged = []

        def log_scalar(self, name, value, step):
            self.logged.append((name, value, step))

    run = Run()
    SacredScalars(run).after_step(4, values(0.5, 0.25))
    assert run.logged == [("loss", 0.5, 4), ("align_loss", 0.25, 4)]
    SacredScalars(None).after_step(5, values(0.5))          # rank > 0: nothing, no error


class FakeWriter:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class FakeClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_tensorboard_scalars_per_step_at_the_global_step():
    """Resumed at step 4, two steps of 2 episodes (batch 1 x 2 ranks) each; the clock reads
    10.0 at the first episode, 10.5 after step 5 and 11.5 after step 6: 2 / 0.5 = 4 and
    2 / 1.0 = 2 episodes per second. The learning rate is the one read before each step."""
    writer, lrs = FakeWriter(), iter([0.01, 0.005])
    counts = {"skipped": 3, "empty_mask": 1}
    hook = TensorBoardScalars(writer, lr=lambda: next(lrs), counts=lambda: counts,
                              episodes_per_step=2, clock=FakeClock([10.0, 10.5, 11.5]))
    hook.on_episode({})
    hook.after_step(5, values(0.75, 0.25))
    counts["empty_mask"] = 2
    hook.on_episode({})
    hook.after_step(6, values(0.5, 0.0))
    got = {(tag, step): value for tag, value, step in writer.scalars}
    assert {step for _, step in got} == {5, 6}
    assert got[("loss/query_ce", 5)] == 0.75 and got[("loss/align", 5)] == 0.25
    assert got[("loss/total", 5)] == 0.75 + 0.25 and got[("loss/total", 6)] == 0.5
    assert got[("train/lr", 5)] == 0.01 and got[("train/lr", 6)] == 0.005
    assert got[("train/episodes_per_s", 5)] == pytest.approx(4.0)
    assert got[("train/episodes_per_s", 6)] == pytest.approx(2.0)
    assert got[("train/skipped_episodes", 6)] == 3
    assert (got[("train/empty_mask_episodes", 5)], got[("train/empty_mask_episodes", 6)]) == (1, 2)
    hook.close(6)
    assert writer.closed


def test_tensorboard_scalars_off_without_a_writer():
    hook = TensorBoardScalars(None, lr=lambda: 1 / 0, counts=lambda: {}, episodes_per_step=1)
    hook.on_episode({})                 # rank > 0 or tensorboard=False: nothing read, no error
    hook.after_step(1, values(1.0))
    hook.close(1)


def test_loss_curves_draw_every_step_of_the_session(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr("util.training.hooks.plot_loss_curves",
                        lambda metrics, target, steps: drawn.append((dict(metrics), target, steps)))
    curves = LossCurves(tmp_path / "c.png")
    curves.plot()                       # no step yet: nothing drawn
    assert drawn == []
    curves.after_step(11, values(1.0, 0.5))
    curves.after_step(12, values(2.0, 0.0))
    curves.close(12)
    metrics, target, steps = drawn[-1]
    assert metrics == {"loss": [1.0, 2.0], "align_loss": [0.5, 0.0]} and target == tmp_path / "c.png"
    assert steps == {"loss": [11, 12], "align_loss": [11, 12]}
    LossCurves(None).after_step(1, values(1.0))
    LossCurves(None).close(1)
    assert len(drawn) == 1


def test_loss_curves_write_a_png(tmp_path):
    curves = LossCurves(tmp_path / "curves.png")
    for step in range(1, 6):
        curves.after_step(step, values(1.0 / step, 0.1))
    curves.plot()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_messages_once_per_epoch(caplog):
    hook = EpochMessages(n_epochs=2)
    with caplog.at_level(logging.INFO, logger=HOOKS_LOG):
        for ep in (0, 0, 1, 1):
            hook.on_episode({"epoch": torch.tensor([ep])})
    assert [r.getMessage() for r in caplog.records] == [
        "###### This is epoch 0 of 2 epoches ######", "###### Reloading dataset ######",
        "###### This is epoch 1 of 2 epoches ######"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_counts_steps_from_the_resume_step():
    bar = ProgressBar(n_steps=10, initial=4, enabled=True, stream=Terminal())
    bar.after_step(5, values(0.0))
    bar.after_step(6, values(0.0))
    assert bar.bar.n == 6 and not bar.plain
    bar.close(6)


def test_progress_off_a_terminal_is_a_plain_line_per_interval():
    """Resumed at step 100 of 400, every_s=60: the clock reads 0 at the start, then 30, 61, 90,
    125 s after steps 101..104: lines after step 102 (61 s, 2 steps: 2/61 steps/s, 298 left:
    9089 s = 2h31m) and step 104 (125 s, 4 steps: 296 left / (4/125) = 9250 s = 2h34m), and once
    more at the end for step 105 (130 s, 5 steps: 295 x 130 / 5 = 7670 s = 2h07m)."""
    out = io.StringIO()
    bar = ProgressBar(n_steps=400, initial=100, enabled=True, stream=out, every_s=60,
                      clock=FakeClock([0.0, 30.0, 61.0, 61.0, 90.0, 125.0, 125.0, 126.0, 130.0]))
    for step in (101, 102, 103, 104, 105):
        bar.after_step(step, values(0.0))
    bar.close(105)
    assert out.getvalue().splitlines() == [
        "train: step 102/400 (25%), 0.0328 steps/s, 2h31m left",
        "train: step 104/400 (26%), 0.032 steps/s, 2h34m left",
        "train: step 105/400 (26%), 0.0385 steps/s, 2h07m left"]
    assert "\r" not in out.getvalue()


def test_hooks_run_in_order_and_close_all_even_when_one_fails():
    calls = []

    class Record(Hook):
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def after_step(self, step, values):
            calls.append((self.name, "step", step))

        def on_stop(self, step):
            calls.append((self.name, "stop", step))

        def close(self, step):
            calls.append((self.name, "close", step))
            if self.fail:
                raise OSError("disk full")

    hooks = Hooks([Record("a", fail=True), Record("b")])
    hooks.after_step(3, values(0.0))
    hooks.on_stop(3)
    with pytest.raises(OSError, match="disk full"):
        hooks.close(3)
    assert calls == [("a", "step", 3), ("b", "step", 3), ("a", "stop", 3), ("b", "stop", 3),
                     ("a", "close", 3), ("b", "close", 3)]
