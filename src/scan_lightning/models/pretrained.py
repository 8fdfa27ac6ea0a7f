"""torchvision's pretrained weights, read from the local torch hub cache only: nothing is downloaded at run time."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torchvision.models import WeightsEnum


def hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(weights: WeightsEnum) -> Path:
    """The file ``torch.hub.load_state_dict_from_url`` reads for ``weights`` (the last part of its URL)."""
    return hub_checkpoints() / os.path.basename(urlparse(weights.url).path)


def cached_weights(model: str, name: str) -> WeightsEnum:
    """torchvision's weights ``name`` of ``model`` (an enum name such as ``IMAGENET1K_V1``, or ``DEFAULT``), once
    their file is known to be in the local hub cache; else one error saying which file to fetch from where."""
    try:
        enum = torchvision.models.get_model_weights(model)
    except (ValueError, KeyError):
        raise ValueError(f"model.backbone.weights={name!r}: torchvision has no pretrained weights for {model!r}") from None
    short = name.split(".", 1)[1] if name.startswith(f"{enum.__name__}.") else name
    if short not in enum.__members__:
        raise ValueError(f"model.backbone.weights={name!r} is not a weights name of {model}; choose one of "
                         f"{[m.name for m in enum]} or DEFAULT")
    weights = enum[short]
    path = weights_file(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {model} {weights.name} are not in the local torch hub cache: download {weights.url} "
            f"and put it at {path} (the folder is torch.hub.get_dir()/checkpoints; TORCH_HOME moves it). Nothing is "
            f"downloaded at run time.")
    return weights
