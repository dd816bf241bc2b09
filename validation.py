"""Validation entry point (docs/validation.md): ``python3 validation.py with key=value ...``.

Wiring only: check the config, join the distributed launch (torchrun/srun) if any, validate every
snapshot of ``reload_model_path`` with ``util.validation.run_validation``, print the Dice table.
Rank 0 alone owns the Sacred run directory (metrics, ``interm_preds/``, figures).
In-process (tests): ``ex.run("validation_main", config_updates={...})``. From the command line
the config, data and snapshots are checked before Sacred creates a run (``util.experiment.command_line``): a
mistake is one ``error:`` line and exit status 2 (docs/training.md, "Mistakes and exit codes").
"""
from __future__ import annotations

import logging
import sys

if __name__ == "__main__":
    # first, before the heavy imports: SIGUSR1/SIGTERM end validation with exit 3 (nothing written
    # before the run; the run INTERRUPTED during it), never Python's default for SIGUSR1 (death)
    from util.signals import install_stop_flag
    install_stop_flag(interrupt=True)

from util.log import silence_known_warnings  # noqa: E402

silence_known_warnings()               # before sacred is imported (it imports pkg_resources)

from util.builds import exit_on_mismatched_builds  # noqa: E402

exit_on_mismatched_builds()            # torch and torchvision of two builds: one error line, exit 2

# loaded now, not lazily during the run, so that the run's sources list them (util/experiment/run_record.py)
import data.geometry  # noqa: E402,F401
import models.grid_proto_fewshot  # noqa: E402,F401
import util.figures  # noqa: E402,F401
from config_ssl_upload import ex  # noqa: E402
from util.distributed import cleanup, init_distributed, launch_rank  # noqa: E402
from util.experiment.command_line import run_command_line  # noqa: E402
from util.experiment.config_check import check_config, check_run  # noqa: E402
from util.experiment.entry_help import VALIDATION_KEYS, asks_for_help, entry_help  # noqa: E402
from util.log import setup_logging  # noqa: E402
from util.validation import dice_table, run_directory, run_validation, steps_table  # noqa: E402

log = logging.getLogger("main")


@ex.main
def validation_main(_run, _config):
    setup_logging(launch_rank())
    summary = check_config({**_config, "mode": "val"})
    info = init_distributed(_config["gpu_id"])
    try:
        given = set(_run.config_modifications.modified) | set(_run.config_modifications.added)
        results = run_validation(_config, device=info.device, run=_run if info.is_main else None,
                                 out_dir=run_directory(_run) if info.is_main else None, given=given)
        if info.is_main:
            for res in results:
                print(f"\n### Dice, fold {_config['eval_fold']}, snapshot {res.path} (step {res.step})")
                print(dice_table(res, summary.card))
            if len(results) > 1:
                print("\n### Mean Dice per snapshot\n" + steps_table(results, summary.card))
        return [{"step": r.step, "meanDice": r.summary(r.dice)[2]} for r in results]
    finally:
        cleanup()


def check_validation(config) -> None:
    """The pre-flight of a validation run (``util.experiment.config_check.check_run``, mode 'val')."""
    check_run(config, "val")


VALIDATION_HELP = ("Score trained snapshots (reload_model_path=) with the 1-shot protocol of Roy et al.; "
                   "the network options come from the snapshot.")


if __name__ == "__main__":
    if asks_for_help(sys.argv):
        print(entry_help(ex, "validation.py", VALIDATION_HELP, VALIDATION_KEYS,
                         ["docs/validation.md", "docs/method.md, 'Config keys'", "docs/training.md"]))
        sys.exit(0)
    sys.exit(run_command_line(ex, sys.argv, main_command="validation_main", check=check_validation))
