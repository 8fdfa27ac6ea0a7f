"""The training set's shuffled order, resumable in the middle of a pass (a run stopped by a signal mid-epoch)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import RandomSampler


class ResumableRandomSampler(RandomSampler):
    """:class:`~torch.utils.data.RandomSampler` (the same draws, so runs are unchanged) that remembers the seed of
    its current pass. :meth:`resume` makes the next pass repeat that order without the samples already trained
    on, and puts torch's generator back where the checkpoint left it: creating the DataLoader iterator drew from
    it once more than the uninterrupted run did at this point."""

    def __init__(self, data_source: Any) -> None:
        super().__init__(data_source)
        self.pass_seed: int | None = None
        self._resume: dict[str, Any] | None = None

    def resume(self, state: dict[str, Any]) -> None:
        """``state`` from :func:`train_order_state`: the pass's seed, samples done, torch generator state."""
        self._resume = state

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            torch.set_rng_state(state["torch_rng"])
            self.pass_seed, skip = int(state["seed"]), int(state["samples_done"])
        else:   # RandomSampler's own draw
            self.pass_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        order = torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(self.pass_seed))
        yield from order[skip:].tolist()


def train_order_state(trainer: pl.Trainer, sampler: ResumableRandomSampler | None, batch_size: int) -> dict:
    """What a checkpoint written in the middle of a training pass needs to continue it exactly; empty at an epoch's
    end (the next pass draws a new order as usual) or when the sampler in use is not ours (DDP)."""
    # Lightning declares the tracker a _ReadyCompletedTracker; the batch progress holds a _ProcessedTracker
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
    if sampler is None or sampler.pass_seed is None or not 0 < done < trainer.num_training_batches:
        return {}
    seed = sampler.pass_seed
    if trainer.train_dataloader is None or getattr(trainer.train_dataloader, "sampler", None) is not sampler:
        return {}
    return {"seed": seed, "samples_done": done * batch_size, "torch_rng": torch.get_rng_state()}
