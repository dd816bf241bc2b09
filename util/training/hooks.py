"""The training loop's per-step concerns, one hook each (docs/training.md, 'Logs and curves'):
the epoch messages, the progress bar, the interval means in the log, the Sacred scalars, the
TensorBoard scalars, the loss curves and the snapshots. ``util.training.loop`` calls every hook
of a :class:`Hooks` at fixed points: ``on_episode`` before each step, ``after_step`` after each
step that updated the weights, ``on_stop`` when a stop was agreed, ``close`` at the end (stopped
or not).

A hook holds its own state and knows nothing of the others, so each is tested alone.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from util.figures import plot_loss_curves
from util.tensorboard_log import add_scalars

__all__ = ["Hook", "Hooks", "EpochMessages", "ProgressBar", "IntervalLog", "SacredScalars",
           "TensorBoardScalars", "LossCurves", "Snapshots", "TQDM_MININTERVAL_S",
           "PLAIN_PROGRESS_EVERY_S"]

log = logging.getLogger(__name__)

TQDM_MININTERVAL_S = 5.0
PLAIN_PROGRESS_EVERY_S = 60.0          # a progress line this often when stderr is not a terminal


class Hook:
    """Base: every method does nothing. ``step`` is the number of optimizer steps done."""

    def on_episode(self, episode: Mapping[str, Any]) -> None:
        """Before the step that trains on ``episode`` (a collated batch)."""

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        """After a step that updated the weights; ``values`` holds ``loss`` and ``align_loss``."""

    def on_stop(self, step: int) -> None:
        """A stop was agreed by every rank after ``step``; the loop ends after this."""

    def close(self, step: int) -> None:
        """The loop ended (completed, stopped or failed)."""


class Hooks(Hook):
    """Calls each hook in order; ``close`` reaches every hook even when one of them raises."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def on_episode(self, episode: Mapping[str, Any]) -> None:
        for h in self.hooks:
            h.on_episode(episode)

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        for h in self.hooks:
            h.after_step(step, values)

    def on_stop(self, step: int) -> None:
        for h in self.hooks:
            h.on_stop(step)

    def close(self, step: int) -> None:
        errors = []
        for h in self.hooks:
            try:
                h.close(step)
            except Exception as err:      # noqa: BLE001 - re-raised below, after the other hooks
                errors.append(err)
        if errors:
            raise errors[0]


class EpochMessages(Hook):
    """The original's 'This is epoch ...' line when an episode of a new epoch arrives, and its
    'Reloading dataset' line between epochs."""

    def __init__(self, n_epochs: int) -> None:
        self.n_epochs = int(n_epochs)
        self.epoch: int | None = None

    def on_episode(self, episode: Mapping[str, Any]) -> None:
        ep = int(episode["epoch"][0]) if "epoch" in episode else 0
        if ep != self.epoch:
            if self.epoch is not None:
                log.info("###### Reloading dataset ######")
            log.info("###### This is epoch %d of %d epoches ######", ep, self.n_epochs)
            self.epoch = ep


class ProgressBar(Hook):
    """Progress on stderr (rank 0 only: ``enabled``): a tqdm bar on a terminal; elsewhere (a log
    file, Slurm's output) one plain line every ``every_s`` seconds and at the end,
    ``train: step 200/1000 (20%), 1.25 steps/s, 10m40s left``, since a bar's carriage returns
    pile up there as one endless line."""

    def __init__(self, n_steps: int, initial: int, *, enabled: bool, stream: Any = None,
                 every_s: float = PLAIN_PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.n_steps, self.every_s, self.clock = int(n_steps), float(every_s), clock
        isatty = getattr(self.stream, "isatty", None)
        self.plain = enabled and not (callable(isatty) and isatty())
        self.bar = tqdm(total=n_steps, initial=initial, disable=not enabled or self.plain, unit="step",
                        desc="train", mininterval=TQDM_MININTERVAL_S, file=self.stream)
        self.start_step = self.step = self.printed = int(initial)
        self.t0 = self.last = clock() if self.plain else 0.0

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        self.bar.update(1)
        self.step = step
        if self.plain and self.clock() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        self.last, self.printed = now, self.step
        done = self.step - self.start_step
        rate = done / (now - self.t0) if now > self.t0 else float("nan")
        left = (self.n_steps - self.step) / rate if rate > 0 else float("nan")
        print(f"train: step {self.step}/{self.n_steps} ({100 * self.step // max(self.n_steps, 1)}%), "
              f"{rate:.3g} steps/s, {_clock_text(left)} left", file=self.stream, flush=True)

    def close(self, step: int) -> None:
        self.bar.close()
        if self.plain and self.step != self.printed:
            self._line()


def _clock_text(seconds: float) -> str:
    if seconds != seconds:            # NaN: no rate yet
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class IntervalLog(Hook):
    """``step N: loss: L, align_loss: A,`` every ``every`` steps, at the last step and at a stop:
    the true means over the steps since the last line (the original divided by ``print_interval``
    whatever the count)."""

    def __init__(self, every: int, n_steps: int) -> None:
        self.every, self.n_steps = int(every), int(n_steps)
        self.sums, self.n = [0.0, 0.0], 0
        self.last_step: int | None = None

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        self.sums[0] += values["loss"]
        self.sums[1] += values["align_loss"]
        self.n += 1
        self.last_step = step
        if step % self.every == 0 or step == self.n_steps:
            self.flush(step)

    def on_stop(self, step: int) -> None:
        if self.n:
            self.flush(step)

    def flush(self, step: int) -> tuple[float, float]:
        """Log the means since the last line and start a new interval; the means."""
        means = (self.sums[0] / max(self.n, 1), self.sums[1] / max(self.n, 1))
        self.sums, self.n = [0.0, 0.0], 0
        log.info("step %d: loss: %s, align_loss: %s,", step, *means)
        return means


class SacredScalars(Hook):
    """``run.log_scalar('loss' | 'align_loss', value, step)`` per step (rank 0's run; None: off)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.log_scalar("loss", values["loss"], step)
            self.run.log_scalar("align_loss", values["align_loss"], step)


class TensorBoardScalars(Hook):
    """Per step into a TensorBoard writer (rank 0's; None: off): ``loss/query_ce``, ``loss/align``,
    ``loss/total`` (their sum), ``train/lr`` (the rate the step used), ``train/episodes_per_s``
    (all ranks' episodes, skipped ones included, since the previous step), and the run's
    ``train/skipped_episodes`` and ``train/empty_mask_episodes`` so far. ``step`` is the global
    step, so a resumed run continues the curves where its snapshot left them.

    Args:
        lr: the current learning rate (read before each step).
        counts: ``{"skipped": n, "empty_mask": n}`` so far.
        episodes_per_step: episodes one step draws on all ranks (batch_size x world size).
    """

    def __init__(self, writer: Any, *, lr: Callable[[], float], counts: Callable[[], Mapping[str, int]],
                 episodes_per_step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.writer, self.lr, self.counts, self.clock = writer, lr, counts, clock
        self.episodes_per_step = int(episodes_per_step)
        self.since: float | None = None
        self.episodes = 0
        self.step_lr = float("nan")

    def on_episode(self, episode: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        if self.since is None:
            self.since = self.clock()
        self.episodes += self.episodes_per_step
        self.step_lr = float(self.lr())

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        now = self.clock()
        elapsed = now - (self.since if self.since is not None else now)
        counts = self.counts()
        add_scalars(self.writer, {
            "loss/query_ce": values["loss"], "loss/align": values["align_loss"],
            "loss/total": values["loss"] + values["align_loss"], "train/lr": self.step_lr,
            "train/episodes_per_s": self.episodes / elapsed if elapsed > 0 else float("nan"),
            "train/skipped_episodes": counts["skipped"],
            "train/empty_mask_episodes": counts["empty_mask"]}, step)
        self.since, self.episodes = now, 0

    def close(self, step: int) -> None:
        if self.writer is not None:
            self.writer.close()


class LossCurves(Hook):
    """Every step's losses of this session, drawn to ``target`` (a PNG) by :meth:`plot` (at each
    snapshot) and at the end; ``target`` None: nothing drawn."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {"loss": [], "align_loss": []}

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        self.steps.append(step)
        for key in self.values:
            self.values[key].append(values[key])

    def plot(self) -> None:
        if self.target is not None and self.steps:
            plot_loss_curves(self.values, self.target, steps={k: self.steps for k in self.values})

    def close(self, step: int) -> None:
        self.plot()


class Snapshots(Hook):
    """``save(step)`` every ``every`` steps and at the last step; at a stop, once more unless
    this step was just saved. ``saved_at`` is the step of the newest snapshot (-1: none)."""

    def __init__(self, every: int, n_steps: int, save: Callable[[int], Any], *,
                 saved_at: int = -1) -> None:
        self.every, self.n_steps = int(every), int(n_steps)
        self.save = save
        self.saved_at = saved_at

    def after_step(self, step: int, values: Mapping[str, float]) -> None:
        if step % self.every == 0 or step == self.n_steps:
            self._save(step)

    def on_stop(self, step: int) -> None:
        if self.saved_at != step:
            self._save(step)

    def _save(self, step: int) -> None:
        self.save(step)
        self.saved_at = step
