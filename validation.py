"""Validation entry point (docs/validation.md): ``python3 validation.py with key=value ...``.

Wiring only: check the config, join the distributed launch (torchrun/srun) if any, validate every
snapshot of ``reload_model_path`` with ``util.evaluate.run_validation``, print the Dice table.
Rank 0 alone owns the Sacred run directory (metrics, ``interm_preds/``, figures).
In-process (tests): ``ex.run("validation_main", config_updates={...})``.
"""
from __future__ import annotations

import logging

from config_ssl_upload import ex
from util.config_check import check_config
from util.distributed import cleanup, init_distributed, launch_rank
from util.evaluate import dice_table, run_directory, run_validation, steps_table
from util.log import setup_logging

log = logging.getLogger("main")


@ex.main
def validation_main(_run, _config):
    setup_logging(launch_rank())
    summary = check_config({**_config, "mode": "val"})
    info = init_distributed(_config["gpu_id"])
    try:
        results = run_validation(_config, device=info.device, run=_run if info.is_main else None,
                                 out_dir=run_directory(_run) if info.is_main else None)
        if info.is_main:
            for res in results:
                print(f"\n### Dice, fold {_config['eval_fold']}, snapshot {res.path} (step {res.step})")
                print(dice_table(res, summary.card))
            if len(results) > 1:
                print("\n### Mean Dice per snapshot\n" + steps_table(results, summary.card))
        return [{"step": r.step, "meanDice": r.summary(r.dice)[2]} for r in results]
    finally:
        cleanup()


if __name__ == "__main__":
    ex.run_commandline()
