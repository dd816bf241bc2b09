"""Dilated-FCN encoders: a ResNet with output stride 8 plus the 1x1 ``localconv``
(docs/method.md, 'Model (ALPNet)').

``dlfcn_res101`` is torchvision's DeepLabV3-ResNet101 backbone (layer3 and layer4 dilated, a
256 x 256 input gives 2048 x 32 x 32), followed by ``localconv`` 2048 -> 256 without bias. The
DeepLabV3 ASPP head (``aspp_out``) and ``asppconv`` are built but never used, so that the
state_dict keys are exactly those of the original code (``tests/fixtures/alpnet/state_dict_keys.json``)
and its checkpoints load.

Smaller encoders with the same structure, for CPU demos: ``dlfcn_res50`` (torchvision's
DeepLabV3-ResNet50 backbone) and ``dlfcn_res18`` (ResNet-18 whose layer3/layer4 are made stride 1
and dilated 2/4 here, as torchvision does for Bottleneck ResNets; localconv 512 -> 256).
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP

from models.backbone.weights import MODEL_NAMES, load_cached_state, weights_spec

__all__ = ["FEATURE_CHANNELS", "OUTPUT_STRIDE", "DilatedFCNEncoder", "build_encoder",
           "load_torchvision_state"]

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 256          # localconv output channels
OUTPUT_STRIDE = 8               # 256 x 256 -> 32 x 32
ASPP_RATES = (12, 24, 36)       # torchvision DeepLabHead (unused head, kept for the keys)
N_VOC_CLASSES = 21              # torchvision COCO DeepLabV3 heads (only their shapes matter)
UNUSED_KEYS = ("localconv.weight", "asppconv.weight")   # never in torchvision weight files


class DilatedFCNEncoder(nn.Module):
    """ResNet backbone (output stride 8) + ``localconv``; the ASPP modules are unused.

    Submodules (their names are the state_dict keys under ``encoder.``): ``backbone``
    (``IntermediateLayerGetter`` returning layer4 as ``'out'``), ``localconv``, ``asppconv``,
    ``aspp_out`` (ASPP + 3x3 conv 256 -> 256 of DeepLabHead). The unused ``asppconv`` and
    ``aspp_out`` do not require gradients: SGD never changed them in the original either (their
    gradients were None), and DDP then needs no ``find_unused_parameters``.
    """

    def __init__(self, backbone: nn.Module, backbone_channels: int, aspp_out: nn.Sequential,
                 modelname: str) -> None:
        super().__init__()
        self.modelname = modelname
        self.backbone = backbone
        self.localconv = nn.Conv2d(backbone_channels, FEATURE_CHANNELS, kernel_size=1, stride=1,
                                   bias=False)
        self.asppconv = nn.Conv2d(FEATURE_CHANNELS, FEATURE_CHANNELS, kernel_size=1, bias=False)
        self.aspp_out = aspp_out
        self.asppconv.requires_grad_(False)
        self.aspp_out.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W -> N x 256 x H/8 x W/8 (ceil for sizes not divisible by 8)."""
        return self.localconv(self.backbone(x)["out"])


def _deeplab_parts(modelname: str) -> tuple[nn.Module, nn.Sequential]:
    """Backbone and (ASPP, 3x3 conv) of torchvision's DeepLabV3, randomly initialised."""
    builder = deeplabv3_resnet101 if modelname == "dlfcn_res101" else deeplabv3_resnet50
    model = builder(weights=None, weights_backbone=None, num_classes=N_VOC_CLASSES,
                    aux_loss=False)
    return model.backbone, nn.Sequential(model.classifier[0], model.classifier[1])


def _dilate_basic_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Make a BasicBlock layer stride 1: the first block keeps the previous dilation, the others
    use ``dilation`` (torchvision's ``replace_stride_with_dilation`` rule for Bottlenecks)."""
    for i, block in enumerate(layer):
        d = previous if i == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            conv.dilation = (d, d)
            conv.padding = (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _resnet18_parts() -> tuple[nn.Module, nn.Sequential]:
    net = resnet18(weights=None)
    _dilate_basic_layer(net.layer3, previous=1, dilation=2)
    _dilate_basic_layer(net.layer4, previous=2, dilation=4)
    backbone = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
    aspp_out = nn.Sequential(ASPP(512, list(ASPP_RATES)),
                             nn.Conv2d(FEATURE_CHANNELS, FEATURE_CHANNELS, 3, padding=1,
                                       bias=False))
    return backbone, aspp_out


_BACKBONE_CHANNELS = {"dlfcn_res101": 2048, "dlfcn_res50": 2048, "dlfcn_res18": 512}


def build_encoder(modelname: str, init: str) -> DilatedFCNEncoder:
    """Build an encoder and load its pretrained weights from the torch hub cache.

    Args:
        modelname: one of ``MODEL_NAMES``.
        init: 'coco', 'imagenet' or 'random' (already resolved, see ``weights.resolve_init``).
    Raises:
        ValueError: unknown model or init, or a weights file whose keys do not fit.
        MissingWeightsError: weights not cached (checked before the network is built).
    """
    if modelname not in MODEL_NAMES:
        raise ValueError(f"which_model/modelname={modelname!r}: expected one of {MODEL_NAMES}")
    state = None
    if init != "random":
        spec = weights_spec(modelname, init)
        state = load_cached_state(spec)
    if modelname == "dlfcn_res18":
        backbone, aspp_out = _resnet18_parts()
    else:
        backbone, aspp_out = _deeplab_parts(modelname)
    encoder = DilatedFCNEncoder(backbone, _BACKBONE_CHANNELS[modelname], aspp_out, modelname)
    if state is not None:
        load_torchvision_state(encoder, state, init, spec.cache_path)
    log.info("encoder %s, init %s", modelname, init)
    return encoder


def load_torchvision_state(encoder: DilatedFCNEncoder, state: dict[str, torch.Tensor], init: str,
                           path: object) -> None:
    """Load a torchvision weights file's state into ``encoder`` (``path`` names it in errors).

    COCO files: ``backbone.*`` and ``classifier.0/1.*`` (-> ``aspp_out.0/1.*``); the rest of the
    head and ``aux_classifier.*`` are dropped. ImageNet files: ResNet keys (-> ``backbone.*``),
    ``fc.*`` dropped. Every backbone weight must be found."""
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if init == "coco":
            if key.startswith("backbone."):
                mapped[key] = value
            elif key.startswith(("classifier.0.", "classifier.1.")):
                mapped["aspp_out." + key[len("classifier."):]] = value
        elif not key.startswith("fc."):
            mapped["backbone." + key] = value
    result = encoder.load_state_dict(mapped, strict=False)
    allowed = set(UNUSED_KEYS)
    if init == "imagenet":
        allowed |= {k for k in encoder.state_dict() if k.startswith("aspp_out.")}
    missing = [k for k in result.missing_keys if k not in allowed]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: not the expected {encoder.modelname} '{init}' weights; "
                         f"missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}")
