"""Seeds derived from the study seed, the same in every process.

Python's ``hash()`` of a tuple holding a string is salted per process (``PYTHONHASHSEED``), so a
seed drawn from it changes between two runs of the same config; numpy's ``SeedSequence`` mixes
integers the same way everywhere, and its streams stay apart for different inputs.
"""

from __future__ import annotations

import numpy as np

# the second word of every derived seed names its use, so two uses never share a seed
_VIEWS = 0
_RANK = 1


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from non-negative integers (the study seed first, then a use)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1)[0])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a training rank's own draws (MAE masks, noise): one per rank, repeatable."""
    return derive_seed(seed, _RANK, rank)


def view_seed(seed: int, epoch: int, row: int) -> int:
    """The seed of one image's augmentations in one epoch: fresh per epoch, repeated on a re-run."""
    return derive_seed(seed, _VIEWS, epoch, row)
