#!/usr/bin/env bash
# 1-shot validation on abdominal CT of the snapshots of train_ssl_abdominal_ct.sh (or RELOAD_PATH).
# Runs every fold in FOLDS and label group in LABEL_GROUPS (defaults: all 5 folds, groups 0 and 1;
# FOLDS=0 LABEL_GROUPS=0 is the fork's single run). Settings, overrides and DRY_RUN=1: see
# examples/launch_lib.sh. Extra Sacred arguments go after the script name, e.g.
#   DRY_RUN=1 FOLDS=0 examples/test_ssl_abdominal_ct.sh n_steps=1000
set -euo pipefail
DATASET="${DATASET:-SABS_Superpix}"
SUPP_ID="${SUPP_ID:-[6]}"                 # the last scan of each fold's validation list
declare -A EXCLU_BY_GROUP=([0]='[2,3]' [1]='[1,6]')   # setting 2: the group's test organs (docs/method.md)
source "$(dirname "${BASH_SOURCE[0]}")/launch_lib.sh"
alpnet_main test "$@"
