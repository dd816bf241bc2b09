"""The training engine (docs/training.md): one optimizer step (``step``), the loop and its hooks
(``loop``, ``hooks``) and resumption (``resume``)."""
from util.training.loop import CURVES_PNG, MAX_CONSECUTIVE_SKIPS, train
from util.training.resume import SNAPSHOT_DIR, TrainState, find_resume_snapshot
from util.training.step import (
                                WCE_WEIGHTS,
                                NonFiniteLossError,
                                agree_flags,
                                build_criterion,
                                build_optimizer,
                                build_scheduler,
                                episode_errors,
                                episode_inputs,
                                loss,
                                train_step,
)

__all__ = ["CURVES_PNG", "MAX_CONSECUTIVE_SKIPS", "train", "SNAPSHOT_DIR", "TrainState",
           "find_resume_snapshot", "WCE_WEIGHTS", "NonFiniteLossError", "agree_flags",
           "build_criterion", "build_optimizer", "build_scheduler", "episode_errors",
           "episode_inputs", "loss", "train_step"]
