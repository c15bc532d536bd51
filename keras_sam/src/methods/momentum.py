"""Direction source: MSAM's look-ahead along the negative momentum.

References:
    Becker, Altrock and Risse, "Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead", 2024, Alg. 1 (Fig. 1).
"""

from __future__ import annotations

from collections.abc import Sequence


def direction(ema: Sequence) -> list:
    """`d = -m`, `m` the EMA of the gradients (`friendly.ema_update`).

    MSAM's step (Alg. 1) takes its one gradient at `w - rho v / ||v||`,
    `v = mu v + g` the momentum: the l2 geometry along `-v`. The EMA
    `m = mu m + (1 - mu) g` started at zero is `(1 - mu) v`, so the
    normalised directions are the same, whatever the base optimizer.
    """
    return [-m for m in ema]
