"""Loss terms and the composer that weights and sums them."""
from scan_lightning.losses.composer import LossComposer
from scan_lightning.losses.l2w import SampleWeightedCrossEntropy, WeightPredictor
from scan_lightning.losses.terms import (
    CrossEntropy,
    Distillation,
    FeatureHint,
    LossTerm,
    OneForAll,
    RampedCrossEntropy,
    WeightedCrossEntropy,
    kd_kl,
    select_exits,
)

__all__ = ["CrossEntropy", "Distillation", "FeatureHint", "LossComposer", "LossTerm", "OneForAll", "RampedCrossEntropy",
           "SampleWeightedCrossEntropy", "WeightPredictor", "WeightedCrossEntropy", "kd_kl", "select_exits"]
