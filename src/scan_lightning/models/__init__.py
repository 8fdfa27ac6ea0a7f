"""Backbones cut into sections, exit heads, attention, and the multi-exit network."""
from scan_lightning.models import mobilenet, msdnet, resnet, torchvision_cut, vgg, wide_resnet  # noqa: F401  (register)
from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.heads import AttentionModule, BottleneckHead, LinearHead, MSDNetHead
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.models.outputs import ExitOutputs, ensemble_logits
from scan_lightning.models.registry import build_backbone, list_backbones, register_backbone

__all__ = [
    "AttentionModule", "BottleneckHead", "ExitOutputs", "LinearHead", "MSDNetHead", "MultiExitNetwork", "SectionInfo",
    "SectionedBackbone", "build_backbone", "ensemble_logits", "list_backbones", "register_backbone",
]
