"""The Sacred experiment ``ex``: every config key of the original code with its default, the
project's new keys, and named configs per dataset and setting (docs/method.md, 'Config keys').

Kept for compatibility (docs/method.md, 'Experiment interface'): key names, defaults, experiment
name ``mySSL`` and the run directory ``<path.log_dir>/mySSL_<exp_str>/<run id>/``.
"""
from __future__ import annotations

import logging
import os

from util.log import silence_known_warnings

silence_known_warnings()               # before sacred is imported (it imports pkg_resources)

from sacred import SETTINGS, Experiment  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402

from data.cards import SUPERPIX_SUFFIX, known_cards, load_card  # noqa: E402
from util.distributed import launch_rank  # noqa: E402
from util.experiment.command_line import RESOLVE_COMMAND  # noqa: E402  (the pre-flight's command, no run directory)
from util.experiment.config_check import unified_data_dirs  # noqa: E402
from util.experiment.run_record import record_run_sources  # noqa: E402

SETTINGS.CAPTURE_MODE = "sys"          # the console goes into cout.txt (the original's stayed empty)
SETTINGS.CONFIG.READ_ONLY_CONFIG = True

EXPERIMENT_NAME = "mySSL"              # kept for compatibility: runs go to <log_dir>/mySSL_<exp_str>/
ex = Experiment(EXPERIMENT_NAME, save_git_info=False)
if launch_rank() != 0:
    # ranks other than 0 have no observer by design: silence Sacred's warning about it
    logging.getLogger(EXPERIMENT_NAME).setLevel(logging.ERROR)


def default_paths() -> dict:
    """``log_dir`` and ``<dataset>.data_dir`` for every card found (plain and ``_Superpix``)."""
    paths: dict = {"log_dir": "./runs"}
    for name in known_cards():
        try:
            data_dir = load_card(name).data_dir
        except ValueError:
            continue                   # a broken card fails later, when it is used, with its error
        paths[name] = {"data_dir": data_dir}
        paths[name + SUPERPIX_SUFFIX] = {"data_dir": data_dir}
    return paths


@ex.config
def cfg():
    seed = 1234                        # every episode's randomness is a function of (seed, step, rank)
    gpu_id = 0                         # CUDA/ROCm device (single process); CPU when no GPU
    mode = "train"                     # 'train' or 'val' (set by validation.py)
    num_workers = 4                    # DataLoader workers (0: load in the main process)
    dataset = "CHAOST2_Superpix"       # <CARD>_Superpix: superpixel self-supervision; <CARD>: manual labels
    use_coco_init = True               # original switch: True COCO DeepLabV3 weights, False ImageNet backbone
    init_weights = None                # 'coco' | 'imagenet' | 'random'; None follows use_coco_init

    # Training
    n_steps = 100100                   # optimizer steps, exactly (the original stopped at 100,000)
    batch_size = 1                     # episodes per step and rank (reference: 1);
    #                                    effective batch = batch_size x ranks, lr not scaled
    lr_milestones = [(ii + 1) * 1000 for ii in range(n_steps // 1000 - 1)]
    lr_step_gamma = 0.95
    ignore_label = 255
    print_interval = 100               # log the mean losses every N steps
    save_snapshot_every = 25000        # snapshots/<step>.pth every N steps and at the end
    max_iters_per_load = 1000          # episodes per sub-epoch (dataset reload in between)
    scan_per_load = -1                 # -1: all training scans (reload is then a no-op)
    which_aug = "sabs_aug"             # 'sabs_aug' | 'aug_v3' | 'none'
    input_size = (256, 256)            # kept for compatibility; slices train at their stored size (cut to 256 x 256)
    min_fg_data = 100                  # which classmap_<N>.json the manual-label training uses
    label_sets = 0                     # label group: test labels = pa_all - groups[label_sets]
    exclude_cls_list = [2, 3]          # setting 2: training slices with these organs are skipped
    usealign = True                    # prototype alignment loss
    use_wce = True                     # class weights [0.05, 1.0] on the query cross-entropy
    redraw_empty_superpix = False      # True: redraw a superpixel id absent from its slice (reference: keep)
    precision = "fp32"                 # 'fp32' | 'bf16' (autocast; ~2x faster on GPUs and on CPUs with native bf16)
    compile = False                    # torch.compile the encoder (CPU: ~1.8x on top of bf16; first step slow)
    resume = False                     # continue from the newest snapshot of this experiment
    resume_from = None                 # or from this snapshot file
    deterministic = False              # torch.use_deterministic_algorithms (exact-resume tests)
    tensorboard = True                 # TensorBoard event files in the run folder (docs/training.md)

    # Validation
    z_margin = 0
    eval_fold = 0                      # validation fold; the other folds train
    support_idx = [-1]                 # indices into the fold's validation list
    val_wsize = 2
    n_sup_part = 3
    val_batch_size = 8                 # query slices per forward (results equal one at a time)
    save_raw_geometry = True           # also write predictions in the raw scan's grid when recorded
    write_figures = True               # PNG figures into the run directory

    # Network
    modelname = "dlfcn_res101"         # encoder: dlfcn_res101 | dlfcn_res50 | dlfcn_res18
    clsname = "grid_proto"             # the original default None failed an assertion
    reload_model_path = None           # a snapshot, a list of snapshots, or a snapshots folder
    proto_grid_size = 8
    feature_hw = [32, 32]
    superpix_scale = "MIDDLE"

    model = {
        "align": usealign,
        "use_coco_init": use_coco_init,
        "init_weights": init_weights,
        "which_model": modelname,
        "cls_name": clsname,
        "proto_grid_size": proto_grid_size,
        "feature_hw": feature_hw,
        "reload_model_path": reload_model_path,
    }

    task = {
        "n_ways": 1,
        "n_shots": 1,
        "n_queries": 1,
        "npart": n_sup_part,
    }

    optim_type = "sgd"
    optim = {
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0005,
    }

    exp_prefix = ""
    exp_str = "_".join([exp_prefix, dataset, f"sets_{label_sets}_{task['n_shots']}shot"])

    path = default_paths()


@ex.config_hook
def add_observer(config, command_name, logger):
    """One data folder per dataset (``path.<CARD>_Superpix.data_dir`` and ``path.<CARD>.data_dir``
    hold the same value; two different given values are refused, see util/experiment/config_check.py);
    the run's main file, sources and dependencies; rank 0 alone owns the run directory
    ``<log_dir>/mySSL_<exp_str>/<run id>/``."""
    if command_name != RESOLVE_COMMAND:     # the pre-flight keeps the keys as given, to name them
        paths = unified_data_dirs(config)
        if paths is not None:
            config = {**config, "path": paths}
        record_run_sources(ex, command_name)
    ex.observers[:] = [o for o in ex.observers if not isinstance(o, FileStorageObserver)]
    if launch_rank() == 0:
        exp_name = f"{ex.path}_{config['exp_str']}"
        ex.observers.append(FileStorageObserver(os.path.join(config["path"]["log_dir"], exp_name)))
    return config


@ex.command(unobserved=True)
def resolve_config(_config):
    """Compute the config of the given updates and named configs, run nothing, write nothing
    (the entry points check it before the real run)."""
    return dict(_config)


# ---------------------------------------------------------------------------------------------
# Named configs: dataset and setting values (docs/method.md, 'Named configs'), e.g.
#   python3 training.py with chaos_setting2 eval_fold=1
# Setting 1: nothing excluded in training; setting 2: training slices holding a test organ of
# the label group are never used. Launch lines pass the same keys explicitly, which still works.

@ex.named_config
def chaos_setting1():
    # CHAOS MRI, superpixel self-supervision, setting 1 (label group 0: test kidneys).
    dataset = "CHAOST2_Superpix"
    exclude_cls_list = []
    label_sets = 0
    support_idx = [4]                  # the last scan of the 5-scan validation list (as the launchers)
    min_fg_data = 1


@ex.named_config
def chaos_setting2():
    # CHAOS MRI, setting 2, label group 0: kidneys (2, 3) tested and excluded from training.
    dataset = "CHAOST2_Superpix"
    exclude_cls_list = [2, 3]
    label_sets = 0
    support_idx = [4]
    min_fg_data = 1


@ex.named_config
def chaos_setting2_group1():
    # CHAOS MRI, setting 2, label group 1: liver (1) and spleen (4) tested and excluded.
    dataset = "CHAOST2_Superpix"
    exclude_cls_list = [1, 4]
    label_sets = 1
    support_idx = [4]
    min_fg_data = 1


@ex.named_config
def sabs_setting1():
    # Synapse CT, superpixel self-supervision, setting 1 (label group 0: test kidneys).
    dataset = "SABS_Superpix"
    exclude_cls_list = []
    label_sets = 0
    support_idx = [6]                  # the last scan of the 7-scan validation list (as the launchers)
    min_fg_data = 1


@ex.named_config
def sabs_setting2():
    # Synapse CT, setting 2, label group 0: kidneys (2, 3) tested and excluded from training.
    dataset = "SABS_Superpix"
    exclude_cls_list = [2, 3]
    label_sets = 0
    support_idx = [6]
    min_fg_data = 1


@ex.named_config
def sabs_setting2_group1():
    # Synapse CT, setting 2, label group 1: spleen (1) and liver (6) tested and excluded.
    dataset = "SABS_Superpix"
    exclude_cls_list = [1, 6]
    label_sets = 1
    support_idx = [6]
    min_fg_data = 1


@ex.named_config
def c0_setting1():
    # Cardiac MRI (MS-CMRSeg bSSFP), superpixel self-supervision; all three structures tested
    # (one label group; setting 2 is not defined for C0: the LV is on nearly every slice).
    dataset = "C0_Superpix"
    exclude_cls_list = []
    label_sets = 0
    support_idx = [-1]
    min_fg_data = 1


@ex.named_config
def chaos_supervised():
    # Supervised baseline on CHAOS manual labels (classes of pa_all minus the tested ones),
    # setting 2, label group 0.
    dataset = "CHAOST2"
    exclude_cls_list = [2, 3]
    label_sets = 0
    support_idx = [4]
    min_fg_data = 1


@ex.named_config
def sabs_supervised():
    # Supervised baseline on Synapse CT manual labels, setting 2, label group 0.
    dataset = "SABS"
    exclude_cls_list = [2, 3]
    label_sets = 0
    support_idx = [6]
    min_fg_data = 1


@ex.named_config
def quickstart():
    # The CPU demo of examples/quickstart.sh: self-supervised training on synthetic CHAOS scans
    # and 1-shot validation, in minutes on 2 CPU cores. Only the values below differ from the
    # paper's configuration (docs/method.md, 'Config keys'); each says why. (Comments, not a docstring:
    # Sacred would add a docstring as a config entry.)
    # Data: CHAOS MR prepared at 2.5 mm / 128 x 128 instead of 1.25 mm / 256 x 256 (card
    # data/datasets/CHAOST2_128.json5): a quarter of the pixels, a quarter of the compute.
    dataset = "CHAOST2_128_Superpix"
    # Setting 1: nothing excluded. Superpixel training then reads no label and no class index
    # (setting 2 would read classmap_1.json, i.e. the training scans' labels, to skip slices).
    exclude_cls_list = []
    # Encoder: ResNet-18 (dilated, output stride 8, localconv 512 -> 256) from random weights
    # instead of COCO-pretrained ResNet-101: the machine is offline (no pretrained weights) and
    # a ResNet-101 step costs ~10x more on a CPU.
    modelname = "dlfcn_res18"
    init_weights = "random"
    # Prototype grid: a 128 x 128 input gives 16 x 16 features (output stride 8). proto_grid_size
    # stays 8, so the training pooling window is feature_hw / proto_grid_size = 2 x 2 cells =
    # 16 x 16 pixels = 40 x 40 mm, the same physical window as the paper's 4 x 4 cells at 1.25 mm.
    feature_hw = [16, 16]
    # Schedule: 1000 steps instead of 100,100 (minutes on a CPU). The learning rate stays 1e-3,
    # as in the paper's first 1000 steps (lr_milestones, every 1000 steps, then has none). The
    # final snapshot is saved at step 1000 (save_snapshot_every=25000 is never reached). How the
    # length was chosen, with the Dice it gave: docs/training.md, 'Quickstart schedule'.
    n_steps = 1000
    # Episodes are built in the main process: with 2 cores a worker process only competes with
    # the training step for the CPU (building an episode takes ~15 ms).
    num_workers = 0
