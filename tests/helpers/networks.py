"""Small multi-exit networks that build in milliseconds: a narrow SCAN ResNet-18, the same with non-trivial
BatchNorm statistics (so folding has something to fold), and a three-block MSDNet."""
from __future__ import annotations

from torch import nn

from scan_lightning.models import MultiExitNetwork, build_backbone


def small_net(num_classes: int = 3) -> MultiExitNetwork:
    """SCAN ResNet-18 at 1/8 width, 4 exits, in eval mode."""
    return MultiExitNetwork(build_backbone("resnet18", width=0.125), num_classes, bottleneck_width=8).eval()


def scan_net(isc: str | None = None) -> MultiExitNetwork:
    """SCAN ResNet-18 at 1/8 width, 5 classes, with random BatchNorm statistics and affine weights, in eval mode."""
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8, isc=isc)
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def small_msdnet(num_classes: int = 5, num_blocks: int = 3, **kw) -> MultiExitNetwork:
    """MSDNet with 3 scales, one exit per block, MSDNet classifiers, no attention (in training mode)."""
    backbone = build_backbone("msdnet", num_blocks=num_blocks, base=1, step=1, channels=4, growth=2)
    return MultiExitNetwork(backbone, num_classes, head="msdnet", deep_head="msdnet", attention=False,
                            bottleneck_width=8, **kw)
