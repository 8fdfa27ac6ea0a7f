"""The multi-exit network: a sectioned backbone with one exit after every section."""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from scan_lightning.models.backbone import SectionedBackbone
from scan_lightning.models.gradient import equilibrium_scales, scale_gradient
from scan_lightning.models.heads import AttentionModule, BottleneckHead, ExitHead, LinearHead, MSDNetHead, SDNHead
from scan_lightning.models.outputs import ExitOutputs

HEAD_KINDS = ("bottleneck", "linear", "msdnet", "sdn")
DEEP_HEAD_KINDS = ("linear", "msdnet")
SectionOutput = torch.Tensor | list[torch.Tensor]
ISC_TRANSFERS = ("identity", "linear", "cascade")
GE_SCALES = ("all", "coarsest")


def exit_input(h: SectionOutput) -> torch.Tensor:
    """What an exit reads from a section's output: the tensor, or the last (coarsest) map of a multi-scale list."""
    return h[-1] if isinstance(h, (list, tuple)) else h


def take_samples(h: SectionOutput, index: torch.Tensor) -> SectionOutput:
    """Rows ``index`` of a section's output (every map of a multi-scale list)."""
    return [x[index] for x in h] if isinstance(h, (list, tuple)) else h[index]


def plain_runs_every_exit(isc: str | None) -> bool:
    """Does the plain baseline network (what every speed ratio compares with) have to run every exit?

    With linear ISC (IMTA's public code) the deepest classifier reads a transfer of the previous exits' logits, so
    no classifier stands alone: the plain network runs every exit. Without ISC, and with identity ISC (the previous
    logits are added to the deepest head's own: IMTA, Li et al. ICCV 2019), the plain network is every section plus
    the deep head alone, on every backend.
    """
    return isc == "linear"


def _per_shallow_exit(value, n: int, name: str, allowed: tuple | None = None) -> list:
    """Expand a scalar setting to one per shallow exit, or check a given list's length and values."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n
    if len(values) != n:
        raise ValueError(f"model.{name} has {len(values)} entries but the backbone has {n} shallow exits")
    if allowed is not None:
        for v in values:
            if v not in allowed:
                raise ValueError(f"model.{name}={v!r} is not allowed; choose one of {allowed}")
    return values


class ExitBranch(nn.Module):
    """One exit: [attention] -> head -> logits, and with ISC (or ZTW's cascade) the previous exit's logits joined in.

    ``forward(h, previous)`` takes a section's output (a tensor, or a multi-scale list whose coarsest map the
    exit reads) and, when ``isc`` is set, the previous exit's logits for the same samples; it returns
    ``(logits, feature)``. It holds the network's own modules, so it shares their weights.
    """

    def __init__(self, head: ExitHead, attention: nn.Module | None = None, transfer: nn.Module | None = None,
                 isc: str | None = None, isc_detach: bool = True) -> None:
        super().__init__()
        self.attention = attention
        self.head = head
        self.transfer = transfer
        self.isc, self.isc_detach = isc, isc_detach

    def forward(self, h: SectionOutput, previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This exit's ``(logits, feature)`` for section output ``h`` (the coarsest map of a list); ``previous`` is
        needed with ISC only."""
        x = exit_input(h)
        if self.attention is not None:
            x = self.attention(x)
        feature = self.head.features(x)
        if self.isc is None:
            return self.head.fc(feature), feature
        if previous is None:
            raise ValueError(f"this exit needs the previous exit's logits (model.isc={self.isc!r})")
        prior = previous.detach() if self.isc_detach else previous
        if self.isc == "identity":
            return self.head.fc(feature) + prior, feature
        if self.isc == "cascade":
            return self.head.fc(torch.cat([feature, prior], dim=1)), feature
        if self.transfer is None:
            raise ValueError(f"model.isc={self.isc!r} needs a transfer module for the previous exit's logits")
        return self.head.fc(torch.cat([feature, self.transfer(prior)], dim=1)), feature


class MultiExitNetwork(nn.Module):
    """Backbone sections, an exit after each: shallow exits = [attention] + head, deep exit = pool + linear.

    Args:
        backbone: the sectioned feature extractor.
        num_classes: classes of every exit.
        head: ``"bottleneck"`` (SCAN), ``"linear"`` or ``"msdnet"`` (MSDNet's conv classifier) for shallow
            exits; one value or one per shallow exit.
        deep_head: ``"linear"`` (pool + Linear) or ``"msdnet"`` for the deepest exit.
        attention: SCAN attention module before each shallow head; one bool or one per shallow exit.
        bottleneck_width: channels inside the SCAN bottleneck or the MSDNet classifier (128 in both papers;
            ``None`` = the MSDNet classifier keeps its input width, as on ImageNet).
        exit_after: 1-based sections followed by an exit (the last always is); ``None`` = every section.
        gradient_equilibrium: IMTA's GE - each section receives the mean, not the sum, of the gradients
            of the exits behind it (forward unchanged).
        ge_scales: which of a multi-scale section's outputs (MSDNet) GE rescales on their way onward: ``"all"``
            (paper, Eq. 5: every path out of a block, so its parameters get the mean of the exits' gradients) or
            ``"coarsest"`` (public code: only the map the exit reads; the finer scales carry later exits'
            gradients unscaled).
        isc: IMTA's Inline Subnetwork Collaboration - exit i+1 also sees exit i's logits. ``None`` = off;
            ``"identity"`` (paper): the previous logits are added to the exit's own (residual learning);
            ``"linear"`` (public code): Linear(classes -> feature width) + BN + ReLU of the previous
            logits, concatenated with the exit's pooled feature before its Linear.
            ``"cascade"`` (ZTW, Wolczyk et al., NeurIPS 2021): each shallow exit after the first reads the
            previous exit's logits concatenated with its pooled feature before its Linear; the deepest exit (in ZTW
            the backbone's own classifier) reads none, so the plain network is unchanged.
        isc_detach: no gradient along the transfer path (paper; ZTW's cascade stops it too); ``False`` = the public
            code.
    """

    def __init__(
        self,
        backbone: SectionedBackbone,
        num_classes: int,
        head: str | Sequence[str] = "bottleneck",
        attention: bool | Sequence[bool] = True,
        bottleneck_width: int | None = 128,
        deep_head: str = "linear",
        exit_after: Sequence[int] | None = None,
        gradient_equilibrium: bool = False,
        ge_scales: str = "all",
        isc: str | None = None,
        isc_detach: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if exit_after is not None:
            backbone = backbone.regroup(exit_after)
        self.backbone = backbone
        self.num_classes = num_classes
        self.gradient_equilibrium = gradient_equilibrium
        if ge_scales not in GE_SCALES:
            raise ValueError(f"model.ge_scales={ge_scales!r} is not allowed; choose one of {GE_SCALES}")
        self.ge_scales = ge_scales
        if isc is not None and isc not in ISC_TRANSFERS:
            raise ValueError(f"model.isc={isc!r} is not allowed; choose null or one of {ISC_TRANSFERS}")
        self.isc, self.isc_detach = isc, isc_detach
        info = backbone.feature_info
        n_shallow = len(info) - 1
        if isc is not None and n_shallow < (2 if isc == "cascade" else 1):
            need = "two shallow exits to link" if isc == "cascade" else "at least two exits"
            raise ValueError(f"model.isc={isc!r} needs {need}; this network has {n_shallow + 1} exit(s) "
                             f"(model.exit_after={list(exit_after) if exit_after is not None else None})")
        heads = _per_shallow_exit(head, n_shallow, "head", HEAD_KINDS)
        attn = _per_shallow_exit(attention, n_shallow, "attention", (True, False))
        if deep_head not in DEEP_HEAD_KINDS:
            raise ValueError(f"model.deep_head={deep_head!r} is not allowed; choose one of {DEEP_HEAD_KINDS}")
        deep = info[-1]
        self.attentions = nn.ModuleList(
            [AttentionModule(s.channels) if a else nn.Identity() for s, a in zip(info[:-1], attn)]
        )
        exit_heads: list[ExitHead] = []
        for s, kind in zip(info[:-1], heads):
            if kind == "bottleneck":
                if not bottleneck_width:
                    raise ValueError(f"model.bottleneck_width={bottleneck_width} must be > 0 for bottleneck heads")
                stride = max(1, deep.reduction // s.reduction)
                exit_heads.append(BottleneckHead(s.channels, num_classes, deep.channels, stride, bottleneck_width))
            elif kind == "msdnet":
                exit_heads.append(MSDNetHead(s.channels, num_classes, bottleneck_width))
            elif kind == "sdn":
                exit_heads.append(SDNHead(s.channels, num_classes))
            else:
                exit_heads.append(LinearHead(s.channels, num_classes))
        exit_heads.append(MSDNetHead(deep.channels, num_classes, bottleneck_width) if deep_head == "msdnet"
                          else LinearHead(deep.channels, num_classes))
        self.heads = nn.ModuleList(exit_heads)
        self.isc_transfers = nn.ModuleList()
        if isc == "linear":  # every exit after the first takes [feature, transfer(previous logits)]
            for later in exit_heads[1:]:
                width = later.fc.in_features
                self.isc_transfers.append(nn.Sequential(nn.Linear(num_classes, width), nn.BatchNorm1d(width),
                                                        nn.ReLU(inplace=True)))
                later.fc = nn.Linear(2 * width, num_classes)
        if isc == "cascade":  # shallow exits 2..K-1 take [feature, previous logits]
            for later in exit_heads[1:-1]:
                later.fc = nn.Linear(later.fc.in_features + num_classes, num_classes)

    @property
    def num_exits(self) -> int:
        """Number of exits, the deepest included: one per (regrouped) section."""
        return len(self.heads)

    @property
    def feature_widths(self) -> list[int]:
        """Width of each exit's pooled feature (what the feature-hint loss compares)."""
        return [cast(ExitHead, head).feature_width for head in self.heads]   # __init__ made them ExitHeads

    @property
    def sections(self) -> nn.ModuleList:
        """The backbone's sections in forward order."""
        return self.backbone.sections

    def reads_previous(self, i: int) -> bool:
        """Whether exit ``i`` reads the previous exit's logits (ISC: every exit after the first; ZTW's cascade: the
        shallow exits after the first)."""
        if self.isc is None or i == 0:
            return False
        return not (self.isc == "cascade" and i == self.num_exits - 1)

    def exit_branch(self, i: int) -> ExitBranch:
        """Exit ``i`` (0-based) as one module over this network's own submodules: its attention module (shallow
        exits that have one), its head and its ISC transfer (exits after the first, with ``isc="linear"``).
        Cost counting, BatchNorm folding and export work on this, never on the attribute names inside."""
        if not 0 <= i < self.num_exits:
            raise IndexError(f"exit {i} does not exist; this network has exits 0..{self.num_exits - 1}")
        attention = self.attentions[i] if i < len(self.attentions) else None
        transfer = self.isc_transfers[i - 1] if self.isc == "linear" and i > 0 else None
        head = cast(ExitHead, self.heads[i])   # __init__ made them ExitHeads
        return ExitBranch(head, attention, transfer, self.isc if self.reads_previous(i) else None, self.isc_detach)

    def forward_exit(self, i: int, h: SectionOutput, previous: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and feature of exit ``i`` (0-based) from section ``i``'s output ``h``.

        ``previous``: exit ``i - 1``'s logits for the same samples, used when ISC is on.
        """
        return self.exit_branch(i)(h, previous)

    def forward(self, x: torch.Tensor) -> ExitOutputs:
        """Every exit's logits and pooled features for ``x`` (no early exit); with gradient equilibrium (IMTA, Li et
        al., ICCV 2019) the backward pass is rescaled, the forward unchanged."""
        logits: list[torch.Tensor] = []
        features: list[torch.Tensor] = []
        for i, section in enumerate(self.backbone.sections):
            x = section(x)
            branch = exit_input(x)
            if self.gradient_equilibrium:
                to_exit, onward = equilibrium_scales(i, self.num_exits)
                if not isinstance(x, (list, tuple)):
                    x = scale_gradient(branch, onward)
                elif self.ge_scales == "all":   # every path out of the block goes onward at the same scale
                    x = [scale_gradient(t, onward) for t in x]
                else:                           # public code: the exit's map only
                    x = [*x[:-1], scale_gradient(branch, onward)]
                branch = scale_gradient(branch, to_exit)
            out, feat = self.forward_exit(i, branch, logits[-1] if logits else None)
            logits.append(out)
            features.append(feat)
        return ExitOutputs(logits, features)
