"""Training entry point (docs/training.md): ``python3 training.py with key=value ...``.

Wiring only: check the config, join the distributed launch (torchrun/srun) if any, and call
``util.training.train``. Rank 0 alone owns the Sacred run directory, logs and snapshots.
From the command line the config is checked before Sacred creates a run (``util.experiment.command_line``): a
mistake is one ``error:`` line and exit status 2 (docs/training.md, "Mistakes and exit codes").
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __name__ == "__main__":
    # first, before the heavy imports: SIGUSR1/SIGTERM only set the flag the loop reads (a stop
    # while starting up ends the run INTERRUPTED after one step, exit 3; never Python's default: death)
    from util.signals import install_stop_flag
    install_stop_flag()

from util.log import silence_known_warnings  # noqa: E402

silence_known_warnings()               # before sacred is imported (it imports pkg_resources)

from util.builds import exit_on_mismatched_builds  # noqa: E402

exit_on_mismatched_builds()            # torch and torchvision of two builds: one error line, exit 2

from sacred.observers import FileStorageObserver  # noqa: E402

# loaded now, not lazily during the run, so that the run's sources list them (util/experiment/run_record.py)
import dataloaders.manual_dataset  # noqa: E402,F401
import dataloaders.superpix_dataset  # noqa: E402,F401
import models.grid_proto_fewshot  # noqa: E402,F401
from config_ssl_upload import ex  # noqa: E402
from util.distributed import cleanup, init_distributed, launch_rank  # noqa: E402
from util.experiment.command_line import run_command_line  # noqa: E402
from util.experiment.config_check import check_config, check_run  # noqa: E402
from util.experiment.entry_help import TRAINING_KEYS, asks_for_help, entry_help  # noqa: E402
from util.experiment.run_record import record_command  # noqa: E402
from util.log import setup_logging  # noqa: E402
from util.signals import raise_if_stopped  # noqa: E402
from util.training import train  # noqa: E402
from util.training.resume import preflight_resume  # noqa: E402

log = logging.getLogger("main")


def experiment_dir(config) -> Path:
    """``<path.log_dir>/mySSL_<exp_str>``: the runs of this experiment (``resume=True`` searches it)."""
    return Path(config["path"]["log_dir"]) / f"{ex.path}_{config['exp_str']}"


@ex.main
def main(_run, _config):
    setup_logging(launch_rank())
    summary = check_config(_config)
    info = init_distributed(_config["gpu_id"])
    try:
        run_dir = next((Path(o.dir) for o in _run.observers if isinstance(o, FileStorageObserver)), None)
        record_command(_run if info.is_main else None, sys.orig_argv, run_dir)   # for python -m util.runs
        log.info("###### Labels excluded in training : %s ######", list(_config["exclude_cls_list"]))
        log.info("###### Unseen labels evaluated in testing: %s ######", summary.test_labels)
        log.info("###### Training scans: %s (validation fold %d: %s) ######", summary.train_ids,
                 _config["eval_fold"], summary.val_ids)
        result = train(_config, card=summary.card, data_dir=summary.data_dir, train_ids=summary.train_ids,
                       info=info, run=_run if info.is_main else None, run_dir=run_dir,
                       experiment_dir=experiment_dir(_config))
        raise_if_stopped(result, argv=sys.orig_argv, is_main=info.is_main)   # INTERRUPTED, exit 3
        return result
    finally:
        cleanup()


def check_training(config) -> None:
    """The pre-flight of a training run (``util.experiment.config_check.check_run``, mode 'train'), and of
    what a resumption may change (``util.training.resume.preflight_resume``)."""
    check_run(config, "train")
    preflight_resume(config, experiment_dir(config))


TRAINING_HELP = ("Train ALPNet: self-supervised on superpixel pseudolabels (dataset=<CARD>_Superpix), "
                 "or supervised on manual labels (dataset=<CARD>).")


if __name__ == "__main__":
    if asks_for_help(sys.argv):
        print(entry_help(ex, "training.py", TRAINING_HELP, TRAINING_KEYS,
                         ["docs/training.md", "docs/method.md, 'Config keys'", "docs/scale-out.md"]))
        sys.exit(0)
    sys.exit(run_command_line(ex, sys.argv, main_command="main", check=check_training))
