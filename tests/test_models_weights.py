"""Encoder weights and the small encoders: cache lookup without network, the error naming the
path and the fetch command, torchvision state mapping, dlfcn_res18/res50, checkpoints given to
FewShotSeg, and util.fetch_weights offline."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.segmentation import deeplabv3_resnet50

from models.backbone import MissingWeightsError, build_encoder, require_init_weights, resolve_init
from models.backbone.dlfcn import load_torchvision_state
from models.backbone.weights import hub_checkpoint_dir, weights_spec
from models.grid_proto_fewshot import FewShotSeg
from util import fetch_weights

RES18 = {"which_model": "dlfcn_res18", "init_weights": "random", "align": True}


@pytest.fixture(autouse=True)
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under tmp_path (TORCH_HOME); returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_resolve_init() -> None:
    assert resolve_init(None, True) == "coco"
    assert resolve_init(None, False) == "imagenet"
    assert resolve_init("random", True) == "random"
    with pytest.raises(ValueError, match="init_weights='cocoa'"):
        resolve_init("cocoa")


@pytest.mark.parametrize("use_coco_init, file_name", [
    (True, "deeplabv3_resnet101_coco-586e9e4e.pth"), (False, "resnet101-63fe2227.pth")],
    ids=["coco", "imagenet"])
def test_missing_weights_named(empty_hub: Path, use_coco_init: bool, file_name: str) -> None:
    assert hub_checkpoint_dir() == empty_hub
    cfg = {"use_coco_init": use_coco_init, "init_weights": None}
    with pytest.raises(MissingWeightsError) as err:
        FewShotSeg(cfg=cfg)
    msg = str(err.value)
    assert str(empty_hub / file_name) in msg and "python -m util.fetch_weights" in msg
    with pytest.raises(MissingWeightsError, match=file_name):
        require_init_weights("dlfcn_res101", None, use_coco_init)
    assert require_init_weights("dlfcn_res101", "random") is None


def test_no_coco_for_res18() -> None:
    with pytest.raises(ValueError, match="no 'coco' weights for dlfcn_res18"):
        require_init_weights("dlfcn_res18", "coco")


def test_imagenet_weights_from_cache(empty_hub: Path) -> None:
    """A cached ImageNet ResNet-18 file (here made up) fills the backbone; fc is dropped."""
    torch.manual_seed(3)
    src = resnet18(weights=None)
    empty_hub.mkdir(parents=True)
    torch.save(src.state_dict(), empty_hub / weights_spec("dlfcn_res18", "imagenet").file_name)
    enc = build_encoder("dlfcn_res18", "imagenet")
    got = enc.backbone.state_dict()
    for key, value in src.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(got[key], value), key


def test_corrupt_cached_file(empty_hub: Path) -> None:
    empty_hub.mkdir(parents=True)
    path = empty_hub / weights_spec("dlfcn_res18", "imagenet").file_name
    path.write_text("partial download", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}: not a readable.*util.fetch_weights"):
        build_encoder("dlfcn_res18", "imagenet")


def test_coco_mapping() -> None:
    """COCO DeepLabV3 files: backbone and classifier.0/1 (ASPP) load, the rest is dropped."""
    torch.manual_seed(4)
    coco = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                              aux_loss=True).state_dict()
    enc = build_encoder("dlfcn_res50", "random")
    load_torchvision_state(enc, coco, "coco", "coco.pth")
    got = enc.state_dict()
    key = "backbone.layer4.2.conv3.weight"
    assert torch.equal(got[key], coco[key])
    assert torch.equal(got["aspp_out.0.project.0.weight"], coco["classifier.0.project.0.weight"])
    assert torch.equal(got["aspp_out.1.weight"], coco["classifier.1.weight"])
    del coco["backbone.layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"coco.pth: .*backbone.layer1.0.conv1.weight"):
        load_torchvision_state(enc, coco, "coco", "coco.pth")


def test_res18_output_stride_and_dilation() -> None:
    enc = build_encoder("dlfcn_res18", "random").eval()
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 64, 96)).shape == (1, 256, 8, 12)   # output stride 8
    layer4 = enc.backbone.layer4
    assert [b.conv2.dilation for b in layer4] == [(2, 2), (4, 4)]
    assert layer4[0].conv1.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    assert enc.localconv.weight.shape == (256, 512, 1, 1)


def test_res18_episode_trains_and_checkpoint_skips_weights(tmp_path: Path) -> None:
    """dlfcn_res18, batch 2, training with alignment: finite losses and gradients; its
    checkpoint reloads with use_coco_init=True and an empty cache (no lookup); foreign keys are
    named."""
    torch.manual_seed(5)
    model = FewShotSeg(cfg=RES18).train()
    img = torch.randn(2, 3, 128, 128)
    fg = torch.zeros(2, 128, 128)
    fg[:, 32:96, 32:96] = 1                                # 4 of 16 pooled cells
    logits, align, _, _ = model([[img]], [[fg]], [[1 - fg]], [img.flip(-1)], False, 2)
    assert logits.shape == (2, 2, 128, 128)
    loss = nn.functional.cross_entropy(logits, fg.long()) + align
    loss.backward()
    assert torch.isfinite(loss) and align.item() > 0
    assert model.encoder.localconv.weight.grad.abs().sum() > 0
    # every trainable parameter gets a gradient (DDP without find_unused_parameters); the
    # unused ASPP head is frozen
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not any(p.requires_grad for p in model.encoder.aspp_out.parameters())
    ckpt = tmp_path / "res18.pth"
    torch.save(model.state_dict(), ckpt)
    cfg = {**RES18, "init_weights": None, "use_coco_init": True}
    again = FewShotSeg(pretrained_path=ckpt, cfg=cfg)      # no MissingWeightsError
    assert torch.equal(again.encoder.localconv.weight, model.encoder.localconv.weight)
    FewShotSeg(cfg={**cfg, "reload_model_path": str(tmp_path)})  # caller loads: no lookup
    state = model.state_dict()
    state["encoder.head.weight"] = torch.zeros(1)
    del state["encoder.asppconv.weight"]
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match=r"foreign.pth: .*missing keys \(1\): "
                                         r"encoder.asppconv.weight.*unexpected keys \(1\): "
                                         r"encoder.head.weight"):
        FewShotSeg(pretrained_path=tmp_path / "foreign.pth", cfg=RES18)


def test_bad_cfg() -> None:
    with pytest.raises(ValueError, match=r"unknown FewShotSeg cfg keys \['init_weight'\]"):
        FewShotSeg(cfg={"init_weight": "random"})
    with pytest.raises(ValueError, match="which_model/modelname='dlfcn_res34'"):
        FewShotSeg(cfg={"which_model": "dlfcn_res34", "init_weights": "random"})
    with pytest.raises(ValueError, match="cls_name/clsname='proto'"):
        FewShotSeg(cfg={"cls_name": "proto", "init_weights": "random"})


# ------------------------------------------------------------------ util.fetch_weights


def test_fetch_lists_paths(empty_hub: Path, capsys: pytest.CaptureFixture) -> None:
    assert fetch_weights.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert str(empty_hub / "deeplabv3_resnet101_coco-586e9e4e.pth") in out
    assert str(empty_hub / "resnet101-63fe2227.pth") in out
    assert out.count("missing") == 2
    specs = fetch_weights.select_specs("all", "imagenet")
    assert {s.modelname for s in specs} == {"dlfcn_res101", "dlfcn_res50", "dlfcn_res18"}
    with pytest.raises(ValueError, match="model='dlfcn_res18', init='coco'"):
        fetch_weights.select_specs("dlfcn_res18", "coco")


def test_fetch_without_network(empty_hub: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    calls = []

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(fetch_weights.fetch, "__kwdefaults__", {"force": False,
                                                                "download": offline})
    assert fetch_weights.main([]) == 1
    err = capsys.readouterr().err
    assert "FAILED https://download.pytorch.org/models/resnet101-63fe2227.pth" in err
    assert "Name or service not known" in err
    assert calls[0] == ("https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth",
                        str(empty_hub / "deeplabv3_resnet101_coco-586e9e4e.pth"), "586e9e4e")
    assert list(empty_hub.iterdir()) == []          # nothing half-written


def test_fetch_skips_cached(empty_hub: Path) -> None:
    spec = weights_spec("dlfcn_res18", "imagenet")
    empty_hub.mkdir(parents=True)
    spec.cache_path.write_bytes(b"x")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded a cached file")

    report = fetch_weights.fetch([spec], download=never)
    assert report.ok and report.present == [spec.cache_path]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-bn-frozen"])
def test_res18_mixed_fg_modes_batch_equals_single(training: bool) -> None:
    """Batch of 2 whose foregrounds take different modes (item 0: an aligned 4 x 4 feature cell
    -> gridconv+; item 1: straddling cells -> mask): each item equals its batch-1 output, and in
    training the alignment loss is the items' mean."""
    torch.manual_seed(6)
    model = FewShotSeg(cfg=RES18)
    model.train(training)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()
    sup, qry = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    fg = torch.zeros(2, 64, 64)
    fg[0, :32, :32] = 1
    fg[1, 8:28, 8:28] = 1
    res_fg = FewShotSeg.resize_masks(fg, (8, 8))[:, None, None]      # E x Sh x 1 x 8 x 8
    assert FewShotSeg._fg_modes(res_fg) == ["gridconv+", "mask"]

    def run(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = model([[sup[sl]]], [[fg[sl]]], [[1 - fg[sl]]], [qry[sl]], not training, 2)
        return out[0], out[1]

    batch, align = run(slice(0, 2))
    for b in range(2):
        single, align_b = run(slice(b, b + 1))
        assert (batch[b] - single[0]).abs().max() <= 1e-4 * single.abs().max()
        if training:
            assert align_b > 0
    if training:
        mean = (run(slice(0, 1))[1] + run(slice(1, 2))[1]) / 2
        assert abs(align.item() - mean.item()) <= 1e-5
