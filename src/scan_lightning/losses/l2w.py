"""L2W (Han et al., ECCV 2022, "Learning to Weight Samples for Dynamic Early-exiting Networks"): a weight prediction
network gives every sample a loss weight at every exit; it is meta-learned so that training mimics the exit
distribution of budgeted inference (the meta step is :class:`~scan_lightning.training.callbacks.MetaReweighting`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scan_lightning.losses.terms import ExitSelection, LossTerm, select_exits
from scan_lightning.models.outputs import ExitOutputs


def per_exit_losses(logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Every sample's cross-entropy at every given exit, shape (N, K)."""
    return torch.stack([F.cross_entropy(z, target, reduction="none") for z in logits], dim=1)


class WeightPredictor(nn.Module):
    """L2W's weight prediction network: a sample's losses at the K exits -> K weights in (0, 1) (an MLP with one hidden
    layer and a sigmoid output). Its last layer starts at zero, so every weight starts at 0.5 and training starts as
    deep supervision. The authors' code ships a tanh variant centred on 1 (``w = 1 + 0.3 (m - mean m)``); this is the
    plain sigmoid form."""

    def __init__(self, num_exits: int, hidden: int = 100) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden={hidden} must be >= 1")
        last = nn.Linear(hidden, num_exits)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(num_exits, hidden), nn.ReLU(inplace=True), last)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """The (N, K) weights for the (N, K) losses."""
        return torch.sigmoid(self.mlp(losses))


def budgeted_exits(logits: Sequence[torch.Tensor], fractions: Sequence[float]) -> torch.Tensor:
    """The exit each sample takes under budgeted inference with these exit fractions (L2W's meta objective, after
    MSDNet's budgeted protocol): at exit k, of the samples still undecided, the ``fractions[k]`` share of the whole batch
    with the highest max softmax leaves; the deepest exit takes the rest. Returns (N,) exit indices, no gradient."""
    n = logits[0].shape[0]
    taken = torch.full((n,), len(logits) - 1, dtype=torch.long, device=logits[0].device)
    open_ = torch.ones(n, dtype=torch.bool, device=logits[0].device)
    for k, z in enumerate(logits[:-1]):
        count = min(int(round(fractions[k] * n)), int(open_.sum()))
        if count <= 0:
            continue
        confidence = torch.softmax(z.detach(), dim=1).amax(dim=1).masked_fill(~open_, -1.0)
        leave = confidence.topk(count).indices
        taken[leave] = k
        open_[leave] = False
    return taken


def exit_fractions(num_exits: int, ratio: float) -> list[float]:
    """MSDNet's budgeted exit distribution: exit k takes a share proportional to ``ratio ** k`` (1 = uniform)."""
    raw = [ratio ** k for k in range(num_exits)]
    return [r / sum(raw) for r in raw]


class SampleWeightedCrossEntropy(LossTerm):
    """L2W's training loss (Han et al., ECCV 2022): ``mean_n sum_k w_nk * CE_nk`` over the selected exits,
    ``w = predictor(CE)`` from the
    :class:`WeightPredictor` (detached here: only the meta step trains it).

    ``hidden``: the predictor's hidden width. ``meta_ratio``: the budgeted exit distribution the meta objective mimics
    (:func:`exit_fractions`: exit k gets a share ~ ``meta_ratio ** k``; 1 = uniform; the authors' ImageNet runs use
    0.75). The predictor is made by
    :meth:`check`, once the number of exits is known (before any weights are loaded).
    """

    def __init__(self, weight: float = 1.0, exits: ExitSelection = "all", hidden: int = 100,
                 meta_ratio: float = 1.0) -> None:
        super().__init__(weight, exits)
        if hidden < 1:
            raise ValueError(f"hidden={hidden} must be >= 1")
        if not meta_ratio > 0:
            raise ValueError(f"meta_ratio={meta_ratio} must be > 0")
        self.hidden, self.meta_ratio = int(hidden), float(meta_ratio)
        self.predictor: WeightPredictor | None = None

    def check(self, num_exits: int, feature_widths: Sequence[int]) -> None:
        """Make the weight predictor for the selected exits."""
        n = len(select_exits(self.exits, num_exits))
        if self.predictor is None or self.predictor.mlp[0].in_features != n:
            self.predictor = WeightPredictor(n, self.hidden)

    def weighted(self, logits: Sequence[torch.Tensor], target: torch.Tensor, detach_weights: bool) -> torch.Tensor:
        """``mean_n sum_k w_nk CE_nk`` for the selected exits' logits; ``detach_weights=False`` keeps the predictor in
        the graph (the meta step's look-ahead)."""
        if self.predictor is None:
            raise RuntimeError("the weight predictor is made by check(); build the term through LossComposer.check")
        losses = per_exit_losses(logits, target)
        weights = self.predictor(losses.detach())
        return ((weights.detach() if detach_weights else weights) * losses).sum(dim=1).mean()

    def meta_loss(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The meta objective on meta samples: each sample's cross-entropy at the exit budgeted inference gives it
        (:func:`budgeted_exits`), averaged over the samples."""
        taken = budgeted_exits(logits, exit_fractions(len(logits), self.meta_ratio))
        losses = per_exit_losses(logits, target)
        return losses.gather(1, taken[:, None]).mean()

    def forward(self, outputs: ExitOutputs, target: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The sample-weighted loss of the selected exits, the predictor's weights held fixed."""
        idx = select_exits(self.exits, len(outputs.logits))
        return self.weighted([outputs.logits[i] for i in idx], target, detach_weights=True)


def meta_step(net: nn.Module, term: SampleWeightedCrossEntropy, x: torch.Tensor, y: torch.Tensor,
              x_meta: torch.Tensor, y_meta: torch.Tensor, lr: float) -> torch.Tensor:
    """L2W's meta objective after a one-step look-ahead (Han et al., ECCV 2022, Eq. 5-7): the network's trainable
    weights take one SGD step of size ``lr`` on the predictor-weighted loss of ``(x, y)``, kept differentiable in the
    predictor (``torch.func.functional_call``), and the stepped network's :meth:`~SampleWeightedCrossEntropy.meta_loss`
    on ``(x_meta, y_meta)`` is returned; its gradient reaches only the predictor. BatchNorm statistics are updated on
    copies, so the network is left as it was."""
    params: dict[str, torch.Tensor] = {name: p for name, p in net.named_parameters() if p.requires_grad}
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    outputs = torch.func.functional_call(net, (params, buffers), (x,))
    idx = select_exits(term.exits, len(outputs.logits))
    inner = term.weighted([outputs.logits[i] for i in idx], y, detach_weights=False)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
    stepped = {name: p if g is None else p - lr * g for (name, p), g in zip(params.items(), grads)}
    meta_outputs = torch.func.functional_call(net, ({**params, **stepped}, buffers), (x_meta,))
    return term.meta_loss([meta_outputs.logits[i] for i in idx], y_meta)
