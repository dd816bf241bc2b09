"""The validation engine (docs/validation.md): the Roy et al. protocol (``protocol``), one run
over every snapshot asked for (``run``), its result type (``result``), what it writes
(``outputs``: metric names, predictions, tables; ``figures``)."""
from util.validation.outputs import (
                                     PRED_DIR,
                                     RAW_PRED_DIR,
                                     dice_table,
                                     log_result,
                                     run_directory,
                                     sacred_metrics,
                                     steps_table,
                                     write_predictions,
)
from util.validation.result import SnapshotResult
from util.validation.run import EvalOptions, evaluate_snapshot, load_snapshot, run_validation

__all__ = ["PRED_DIR", "RAW_PRED_DIR", "dice_table", "log_result", "run_directory", "sacred_metrics",
           "steps_table", "write_predictions", "SnapshotResult", "EvalOptions", "evaluate_snapshot",
           "load_snapshot", "run_validation"]
