"""A backbone cut into sequential sections, with the metadata an exit needs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SectionInfo:
    """What leaves one section: channel count and total stride (reduction) w.r.t. the input."""

    name: str
    channels: int
    reduction: int


class SectionedBackbone(nn.Module):
    """A feature extractor made of ``sections`` run one after the other.

    An exit may be attached after every section; ``feature_info[i]`` describes the output of section ``i``.
    """

    def __init__(self, sections: nn.ModuleList, feature_info: list[SectionInfo]) -> None:
        super().__init__()
        if len(sections) != len(feature_info):
            raise ValueError(f"{len(sections)} sections but {len(feature_info)} feature_info entries")
        self.sections = sections
        self.feature_info = list(feature_info)

    @property
    def num_sections(self) -> int:
        """How many sections there are (an exit may follow each)."""
        return len(self.sections)

    def regroup(self, exit_after: Sequence[int]) -> SectionedBackbone:
        """Merge sections so exits sit only after the given 1-based sections (the last one always has one)."""
        n = self.num_sections
        given = list(exit_after)
        if not given:
            raise ValueError(f"model.exit_after=[] names no section; give the 1-based sections followed by an exit "
                             f"(e.g. {list(range(1, n + 1))}), or null for an exit after every section")
        if any(isinstance(e, bool) or not isinstance(e, int) for e in given) or given != sorted(set(given)):
            raise ValueError(f"model.exit_after={given} must be increasing 1-based section numbers without repeats, "
                             f"e.g. {list(range(1, n + 1))}")
        ends = sorted(set(given) | {n})
        bad = [e for e in ends if not 1 <= e <= n]
        if bad:
            raise ValueError(f"model.exit_after={list(exit_after)}: sections {bad} do not exist; this backbone has "
                             f"sections 1..{n} ({', '.join(s.name for s in self.feature_info)})")
        sections, start = [], 0
        for end in ends:
            group = list(self.sections[start:end])
            sections.append(group[0] if len(group) == 1 else nn.Sequential(*group))
            start = end
        return SectionedBackbone(nn.ModuleList(sections), [self.feature_info[e - 1] for e in ends])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the output of every section."""
        features = []
        for section in self.sections:
            x = section(x)
            features.append(x)
        return features
