"""Bad configs are refused before any work, naming the key, the file and the fixing command
(docs/training.md, "Mistakes and exit codes"); one data folder per dataset."""
from __future__ import annotations

import copy
import re

import pytest
from sacred.utils import ConfigAddedError

import training  # noqa: F401,I001  (registers the command 'main'; first: it silences sacred's import warning)
from config_ssl_upload import ex
from data.cards import load_card
from tests.tinydata import build_tiny_dataset
from util.experiment.config_check import check_config, resolve_data_dir, unified_data_dirs
from util.user_errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", hw=16, depth=2,
                              block=8)


def set_dir(cfg, folder):
    """Both data keys of CHAOST2 name ``folder`` (what the config hook makes of one given key)."""
    cfg["path"]["CHAOST2_Superpix"] = {"data_dir": str(folder)}
    cfg["path"]["CHAOST2"] = {"data_dir": str(folder)}
    return cfg


def config(tiny, **updates):
    return set_dir(copy.deepcopy(dict(ex.configurations[0](fixed=updates))), tiny.data_dir)


def test_good_config_passes_and_summarises_the_fold(tiny):
    s = check_config(config(tiny, support_idx=[4], eval_fold=1))
    assert s.val_ids == [5, 6, 7, 8, 9] and s.support_ids == [9] and len(s.train_ids) == 15
    assert s.test_labels == [2, 3]


@pytest.mark.parametrize("updates, match", [
    ({"dataset": "NOPE_Superpix"}, r"unknown dataset 'NOPE_Superpix'.*CHAOST2"),
    ({"exclude_cls_list": [2, 7]}, r"exclude_cls_list=\[2, 7\].*\[7\].*CHAOST2"),
    ({"label_sets": 2}, r"label_sets=2 is out of range.*2 label groups"),
    ({"eval_fold": 5}, r"eval_fold=5 is out of range.*5 folds"),
    ({"support_idx": [5]}, r"support_idx=\[5\].*out of range"),
    ({"resume": True, "reload_model_path": "x.pth"}, r"resume=True.*reload_model_path"),
    ({"resume": True, "resume_from": "x.pth"}, r"either resume=True.*or\s+resume_from"),
    ({"which_aug": "strong"}, r"which_aug='strong'.*aug_v3"),
    ({"precision": "fp16"}, r"precision='fp16'.*bf16"),
    ({"superpix_scale": "LARGE"}, r"superpix_scale='LARGE'.*MIDDLE"),
    ({"task": {"n_ways": 2, "n_shots": 1, "n_queries": 1, "npart": 3}}, r"n_ways=2"),
    ({"min_fg_data": "many"}, r"min_fg_data='many'"),
])
def test_refused_with_the_key_named(tiny, updates, match):
    with pytest.raises(ValueError, match=match):
        check_config(config(tiny, **updates))


def test_missing_files_name_the_command(tiny, tmp_path):
    cfg = config(tiny)
    set_dir(cfg, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m data.prepare --dataset CHAOST2"):
        check_config(cfg)
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in tiny.data_dir.iterdir():
        if p.name not in ("superpix-MIDDLE_12.nii.gz", "classmap_1.json"):
            (broken / p.name).symlink_to(p)
    cfg = config(tiny, exclude_cls_list=[])
    set_dir(cfg, broken)
    with pytest.raises(FileNotFoundError, match=r"superpix-MIDDLE_12.*python -m data.pseudolabels"):
        check_config(cfg)
    (broken / "superpix-MIDDLE_12.nii.gz").symlink_to(tiny.data_dir / "superpix-MIDDLE_12.nii.gz")
    check_config(cfg)                                           # setting 1 needs no class map
    cfg = config(tiny, exclude_cls_list=[2, 3])
    set_dir(cfg, broken)
    with pytest.raises(FileNotFoundError, match=r"classmap_1.json.*python -m data.class_index"):
        check_config(cfg)
    cfg = config(tiny, resume_from=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="none.pth"):
        check_config(cfg)


def test_mistyped_key_fails_in_sacred(tiny, tmp_path):
    with pytest.raises(ConfigAddedError):
        ex.run("main", config_updates={"n_step": 5, "path": {"log_dir": str(tmp_path)}})
    assert not any(tmp_path.rglob("config.json"))


def test_named_configs_hold_the_spec_values():
    want = {"chaos_setting1": ("CHAOST2_Superpix", [], 0, [4]),
            "chaos_setting2": ("CHAOST2_Superpix", [2, 3], 0, [4]),
            "chaos_setting2_group1": ("CHAOST2_Superpix", [1, 4], 1, [4]),
            "sabs_setting1": ("SABS_Superpix", [], 0, [6]),
            "sabs_setting2": ("SABS_Superpix", [2, 3], 0, [6]),
            "sabs_setting2_group1": ("SABS_Superpix", [1, 6], 1, [6]),
            "c0_setting1": ("C0_Superpix", [], 0, [-1])}
    for name, (dataset, excl, group, supp) in want.items():
        c = ex.named_configs[name]()
        assert (c["dataset"], c["exclude_cls_list"], c["label_sets"], c["support_idx"]) == \
            (dataset, excl, group, supp), name


@pytest.mark.parametrize("given, key", [
    ({"CHAOST2_Superpix": "A"}, "path.CHAOST2_Superpix.data_dir"),   # training key, read by validation
    ({"CHAOST2": "A"}, "path.CHAOST2.data_dir"),                     # validation key, read by training
    ({"CHAOST2": "A", "CHAOST2_Superpix": "A"}, "path.CHAOST2_Superpix.data_dir"),
], ids=["training-key", "validation-key", "both-same"])
@pytest.mark.parametrize("mode", ["train", "val"])
def test_one_data_folder_whichever_key(tmp_path, given, key, mode):
    cfg = copy.deepcopy(dict(ex.configurations[0]()))
    for name, folder in given.items():
        cfg["path"][name] = {"data_dir": str(tmp_path / folder)}
    card = load_card("CHAOST2")
    assert resolve_data_dir({**cfg, "mode": mode}, card) == (key, tmp_path / "A")
    paths = unified_data_dirs(cfg)
    assert paths["CHAOST2"] == paths["CHAOST2_Superpix"] == {"data_dir": str(tmp_path / "A")}
    with pytest.raises(UserError, match=rf"{re.escape(key)}={re.escape(str(tmp_path / 'A'))}: no such folder"):
        check_config({**cfg, "mode": mode})


def test_two_different_data_folders_are_refused(tmp_path):
    cfg = copy.deepcopy(dict(ex.configurations[0]()))
    cfg["path"]["CHAOST2_Superpix"] = {"data_dir": str(tmp_path / "A")}
    cfg["path"]["CHAOST2"] = {"data_dir": str(tmp_path / "B")}
    want = (rf"path.CHAOST2_Superpix.data_dir={re.escape(str(tmp_path / 'A'))} and "
            rf"path.CHAOST2.data_dir={re.escape(str(tmp_path / 'B'))} differ")
    with pytest.raises(UserError, match=want):
        unified_data_dirs(cfg)
    with pytest.raises(UserError, match=want):
        check_config({**cfg, "mode": "val"})
