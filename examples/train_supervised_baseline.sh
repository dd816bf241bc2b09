#!/usr/bin/env bash
# Supervised baseline: the same network trained on manual labels (dataset name without _Superpix).
# DATASET=CHAOST2 (abdominal MRI, default), SABS (CT) or C0 (cardiac). Setting 2 excludes each
# label group's test organs (from the dataset card); SETTING=1 excludes nothing. Settings,
# overrides and DRY_RUN=1: see examples/launch_lib.sh, e.g.
#   DRY_RUN=1 DATASET=SABS FOLDS=0 examples/train_supervised_baseline.sh
set -euo pipefail
DATASET="${DATASET:-CHAOST2}"
case "$DATASET" in
    *_Superpix) echo "$0 trains on manual labels: use DATASET=${DATASET%_Superpix}" >&2; exit 2 ;;
    CHAOST2) SUPP_ID="${SUPP_ID:-[4]}" ;;
    SABS) SUPP_ID="${SUPP_ID:-[6]}" ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/launch_lib.sh"
LABEL_GROUPS="${LABEL_GROUPS:-$(alpnet_card_groups "$DATASET")}"
SUPP_ID="${SUPP_ID:-$(alpnet_card_support "$DATASET")}"
alpnet_main train "$@"
