#!/usr/bin/env bash
# Self-supervised training on cardiac MRI (MS-CMRSeg bSSFP 'C0', superpixel pseudolabels).
# Label groups and the support index come from the dataset card data/datasets/C0.json5 (all its
# groups; its `support_idx`, else the last validation scan). Default SETTING=1: the cardiac
# structures share every slice, so excluding the test organs' slices (setting 2) would leave no
# training data. Settings, overrides and DRY_RUN=1: see examples/launch_lib.sh, e.g.
#   DRY_RUN=1 FOLDS=0 examples/train_ssl_cardiac.sh
set -euo pipefail
DATASET="${DATASET:-C0_Superpix}"
SETTING="${SETTING:-1}"
source "$(dirname "${BASH_SOURCE[0]}")/launch_lib.sh"
LABEL_GROUPS="${LABEL_GROUPS:-$(alpnet_card_groups "$DATASET")}"
SUPP_ID="${SUPP_ID:-$(alpnet_card_support "$DATASET")}"
alpnet_main train "$@"
