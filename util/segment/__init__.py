"""Segment a user's own scans from one labelled support scan (``segment.py``; docs/segment.md).

- :mod:`util.segment.inputs`: the request, its pre-flight check (every problem at once);
- :mod:`util.segment.checkpoint_info`: checkpoints of ours and of the original code;
- :mod:`util.segment.volumes`: to the training geometry and back (``data.preprocess``,
  ``data.geometry.restore_to_raw``), normalisation, z-ranges, mask volumes;
- :mod:`util.segment.rule`: part assignment with a z-range (the protocol) and without (the
  label-free rules);
- :mod:`util.segment.calibrate`: the default ``support`` rule's calibration on the support scan;
- :mod:`util.segment.run`: :func:`segment`, the whole call, and its outputs.
"""
from __future__ import annotations

from util.segment.checkpoint_info import CheckpointInfo, build_segmenter, inspect_checkpoint
from util.segment.inputs import SegmentRequest, mask_name, preflight
from util.segment.rule import DEFAULT_RULE, RULES, RuleResult, label_free_mask, predict_every_part, support_evidence
from util.segment.run import QueryResult, SegmentReport, csv_name, segment

__all__ = ["SegmentRequest", "SegmentReport", "QueryResult", "segment", "preflight",
           "CheckpointInfo", "inspect_checkpoint", "build_segmenter", "mask_name", "csv_name",
           "RULES", "DEFAULT_RULE", "RuleResult", "label_free_mask", "predict_every_part",
           "support_evidence"]
