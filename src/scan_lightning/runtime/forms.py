"""The deployment form: inference-time rewrites that keep outputs (up to float rounding) and cut the time per MAC.

- BatchNorm folded into the preceding convolution / linear layer (sections through torch.fx ``fuse``; exits by
  folding every conv->BN or linear->BN pair of their ``nn.Sequential`` stacks, transposed convs included);
- the SCAN attention module's sigmoid and product done in place over the mask (one allocation and one pass
  fewer over the exit's largest maps);
- "patchify" convolutions (kernel = stride, no padding: the SCAN bottleneck's 8x8/8, 4x4/4, 2x2/2) run as one
  matrix product over non-overlapping patches, which oneDNN runs several times faster than the conv;
- channels-last memory format, in which oneDNN's CPU convolutions (transposed ones especially) are fastest;
- optionally ``torch.compile`` of every section and exit, batch size dynamic (compaction changes it);
- optionally onnxruntime (``onnxruntime=True``, the ``deploy`` extra): the rewritten parts exported to ONNX
  and run by ORT sessions (:mod:`scan_lightning.export.ort_backend`), far less per-layer overhead at batch 1;
- freed memory kept in the process (``retain_memory``, glibc): no page faults on every batch's fresh activations
  (:mod:`scan_lightning.runtime.memory`), the largest single saving on the exits at batch 256.

The plain network used as the baseline of every speed ratio (all sections + the deep head) is built from the
same rewritten parts, so both sides get the same treatment.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from scan_lightning.models.heads import AttentionModule
from scan_lightning.models.multi_exit import ExitBranch, MultiExitNetwork, SectionOutput, exit_input
from scan_lightning.runtime.backend import Backend, run_all_exits, run_plain
from scan_lightning.runtime.memory import retain_freed_memory
from scan_lightning.utils.defaults import group_defaults, merged

_DEFAULTS: dict[str, bool] = group_defaults("timing")["deploy"]


@dataclass(frozen=True)
class DeployOptions:
    """Which rewrites the deployment form applies; the defaults are ``timing.deploy`` of
    ``conf/timing/default.yaml``, their one home (all on but ``compile``, which costs ~10-60 s per part up front,
    and ``onnxruntime`` / ``openvino``, optional extras; at most one of ``compile``, ``onnxruntime``, ``openvino``). ``retain_memory`` is process-wide (it tunes malloc), so the plain
    network timed beside the early-exit one runs with it as well."""

    fold_batchnorm: bool = _DEFAULTS["fold_batchnorm"]
    in_place_attention: bool = _DEFAULTS["in_place_attention"]
    patch_matmul: bool = _DEFAULTS["patch_matmul"]
    channels_last: bool = _DEFAULTS["channels_last"]
    compile: bool = _DEFAULTS["compile"]
    onnxruntime: bool = _DEFAULTS["onnxruntime"]
    openvino: bool = _DEFAULTS["openvino"]
    retain_memory: bool = _DEFAULTS["retain_memory"]

    def __post_init__(self) -> None:
        not_bool = {k: v for k, v in asdict(self).items() if not isinstance(v, bool)}
        if not_bool:
            raise ValueError(f"timing.deploy settings must be true or false; got {not_bool}")
        if self.compile and self.onnxruntime:
            raise ValueError("timing.deploy: compile and onnxruntime exclude each other; choose one")
        runtimes = [k for k in ("compile", "onnxruntime", "openvino") if getattr(self, k)]
        if len(runtimes) > 1:
            raise ValueError(f"timing.deploy: {' and '.join(runtimes)} exclude each other; choose one")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None) -> DeployOptions:
        """From a ``timing.deploy`` node; what it leaves out comes from ``conf/timing/default.yaml``."""
        return cls(**merged(group_defaults("timing")["deploy"], cfg, "timing.deploy"))

    @classmethod
    def off(cls) -> DeployOptions:
        """No rewrite at all: the network's own modules (outputs bit-identical)."""
        return cls(**dict.fromkeys(cls.__dataclass_fields__, False))

    def to_dict(self) -> dict[str, bool]:
        """The options as plain data."""
        return asdict(self)


def _fold_sequential_pairs(module: nn.Module) -> None:
    """Fold, in place, every (Conv2d | ConvTranspose2d, BatchNorm2d) and (Linear, BatchNorm1d) pair that follow
    each other in an ``nn.Sequential`` anywhere inside ``module`` (eval mode); the BatchNorm is removed."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        items, removed = list(seq._modules.items()), set()
        for (a, first), (b, second) in zip(items, items[1:]):
            if isinstance(second, nn.BatchNorm2d) and isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
                seq._modules[a] = fuse_conv_bn_eval(first, second, transpose=isinstance(first, nn.ConvTranspose2d))
            elif isinstance(second, nn.BatchNorm1d) and isinstance(first, nn.Linear):
                seq._modules[a] = fuse_linear_bn_eval(first, second)
            else:
                continue
            removed.add(b)
        for name in removed:
            del seq._modules[name]


def fold_batchnorm(net: MultiExitNetwork) -> MultiExitNetwork:
    """An eval-mode copy of ``net`` with every BatchNorm folded into the layer before it.

    Sections are traced and fused one by one (torch.fx), so the copy keeps the section/exit structure the
    early-exit predictor walks; exits keep their modules, with the BN of their conv stacks folded.
    """
    folded = copy.deepcopy(net).eval()
    folded.backbone.sections = nn.ModuleList([fuse(m) for m in folded.backbone.sections])
    for i in range(folded.num_exits):
        _fold_sequential_pairs(folded.exit_branch(i))
    return folded


class PatchMatmul(nn.Module):
    """A conv whose kernel equals its stride (no padding, dilation or groups) as one matrix product over the
    non-overlapping patches: the same outputs, a GEMM instead of a strided convolution."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.k = conv.kernel_size
        w = conv.weight.detach()                                       # (out, in, kh, kw)
        self.weight = nn.Parameter(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t().contiguous(),
                                   requires_grad=False)                # (kh * kw * in, out)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution's output, computed as one matrix product over the patches."""
        n, c, h, w = x.shape
        kh, kw = self.k
        ho, wo = h // kh, w // kw
        patches = (x[:, :, : ho * kh, : wo * kw].permute(0, 2, 3, 1)          # NHWC (a view when channels-last)
                   .reshape(n, ho, kh, wo, kw, c).permute(0, 1, 3, 2, 4, 5).reshape(n * ho * wo, kh * kw * c))
        out = patches @ self.weight if self.bias is None else torch.addmm(self.bias, patches, self.weight)
        return out.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)                  # NCHW shape, channels-last memory


class InPlaceAttention(nn.Module):
    """:class:`~scan_lightning.models.heads.AttentionModule` for inference: the same mask, the sigmoid and the
    product with the input written over the mask's buffer (the same outputs up to float rounding, no extra
    full-size maps). A cropped mask (odd map sizes) or an input that needs gradients takes the out-of-place path."""

    def __init__(self, attention: AttentionModule) -> None:
        super().__init__()
        if not isinstance(attention.mask[-1], nn.Sigmoid):
            raise ValueError("InPlaceAttention expects an AttentionModule whose mask ends with a Sigmoid")
        self.mask = nn.Sequential(*list(attention.mask)[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(mask(x)) * x``, written over the mask's buffer where that is safe."""
        logits = self.mask(x)
        if logits.shape[-2:] != x.shape[-2:] or (torch.is_grad_enabled() and x.requires_grad):
            return torch.sigmoid(logits[..., : x.shape[-2], : x.shape[-1]]) * x
        return logits.sigmoid_().mul_(x)


def replace_attention(branches: list[ExitBranch]) -> None:
    """Swap every exit's :class:`AttentionModule` (that exact class) for :class:`InPlaceAttention`, in place."""
    for branch in branches:
        if type(branch.attention) is AttentionModule:
            branch.attention = InPlaceAttention(branch.attention)


def _is_patchify(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (type(m) is nn.Conv2d and m.kernel_size == m.stride and m.kernel_size != (1, 1) and m.groups == 1
            and m.padding == (0, 0) and m.dilation == (1, 1) and m.padding_mode == "zeros")


def replace_patchify_convs(module: nn.Module) -> int:
    """Swap every patchify conv inside ``module`` for :class:`PatchMatmul`, in place; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _is_patchify(child):
                setattr(parent, name, PatchMatmul(child))
                count += 1
    return count


class DeployedNetwork(nn.Module):
    """A multi-exit network in deployment form: ``sections``, ``exits`` (``(h, previous) -> logits``) and the
    plain network (``plain``: every section + the deep head, no shallow exits), all from the same parts."""

    def __init__(self, net: MultiExitNetwork, options: DeployOptions | None = None) -> None:
        super().__init__()
        self.options = options or DeployOptions.off()
        if self.options.retain_memory and all(p.device.type == "cpu" for p in net.parameters()):
            retain_freed_memory()
        net = fold_batchnorm(net) if self.options.fold_batchnorm else copy.deepcopy(net).eval()
        branches = [net.exit_branch(i) for i in range(net.num_exits)]
        if self.options.in_place_attention:
            replace_attention(branches)
        self.num_exits, self.num_classes, self.isc = net.num_exits, net.num_classes, net.isc
        self.sections = nn.ModuleList(net.sections)
        self.exits = nn.ModuleList(branches)
        self.deep_head = branches[-1].head
        self.eval().requires_grad_(False)
        if self.options.patch_matmul:
            replace_patchify_convs(self)
        if self.options.channels_last:
            self.to(memory_format=torch.channels_last)
        self._section_fns: list[Callable[..., Any]] = list(self.sections)
        self._exit_fns = [lambda h, prev, b=b: b(h, prev)[0] for b in self.exits]
        self._deep_fn = lambda h: self.deep_head.fc(self.deep_head.features(exit_input(h)))
        if self.options.compile:
            self._section_fns = [torch.compile(s, dynamic=True) for s in self._section_fns]
            self._exit_fns = [torch.compile(e, dynamic=True) for e in self._exit_fns]
            self._deep_fn = torch.compile(self._deep_fn, dynamic=True)

    @property
    def device(self) -> torch.device:
        """Where the parameters (and so the inputs) are."""
        return next(self.parameters()).device

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input in this form's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last and x.dim() == 4 else x

    def section(self, i: int, h: SectionOutput) -> SectionOutput:
        """Section ``i`` on the previous section's output."""
        return self._section_fns[i](h)

    def exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None) -> torch.Tensor:
        """Exit ``i``'s logits from section ``i``'s output (``previous``: exit ``i - 1``'s logits, for ISC)."""
        return self._exit_fns[i](h, previous)

    def deep(self, h: SectionOutput) -> torch.Tensor:
        """The plain network's head on the last section's output: the deep exit alone, no ISC."""
        return self._deep_fn(h)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network (:func:`~scan_lightning.runtime.backend.run_plain`)."""
        return run_plain(self, x)

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample (what the network computes without early exit)."""
        return run_all_exits(self, x)


def as_deployed(net: MultiExitNetwork | Backend) -> Backend:
    """``net`` itself if already in a deployment form, else its parts as they are (no rewrite: outputs
    bit-identical)."""
    return DeployedNetwork(net) if isinstance(net, MultiExitNetwork) else net


__all__ = ["DeployOptions", "DeployedNetwork", "ExitBranch", "InPlaceAttention", "PatchMatmul", "as_deployed",
           "fold_batchnorm", "replace_patchify_convs"]
