"""Training entry point (docs/training.md): ``python3 training.py with key=value ...``.

Wiring only: check the config, join the distributed launch (torchrun/srun) if any, and call
``util.trainer.train``. Rank 0 alone owns the Sacred run directory, logs and snapshots.
"""
from __future__ import annotations

import logging
from pathlib import Path

from sacred.observers import FileStorageObserver

from config_ssl_upload import ex
from util.config_check import check_config
from util.distributed import cleanup, init_distributed, launch_rank
from util.log import setup_logging
from util.trainer import train

log = logging.getLogger("main")


@ex.main
def main(_run, _config):
    setup_logging(launch_rank())
    summary = check_config(_config)
    info = init_distributed(_config["gpu_id"])
    try:
        run_dir = next((Path(o.dir) for o in _run.observers if isinstance(o, FileStorageObserver)), None)
        log.info("###### Labels excluded in training : %s ######", list(_config["exclude_cls_list"]))
        log.info("###### Unseen labels evaluated in testing: %s ######", summary.test_labels)
        log.info("###### Training scans: %s (validation fold %d: %s) ######", summary.train_ids,
                 _config["eval_fold"], summary.val_ids)
        return train(_config, card=summary.card, data_dir=summary.data_dir, train_ids=summary.train_ids,
                     info=info, run=_run if info.is_main else None, run_dir=run_dir,
                     experiment_dir=Path(_config["path"]["log_dir"]) / f"{ex.path}_{_config['exp_str']}")
    finally:
        cleanup()


if __name__ == "__main__":
    ex.run_commandline()
