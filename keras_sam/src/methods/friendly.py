"""Direction source: the friendly direction of F-SAM.

References:
    Li et al., "Friendly Sharpness-Aware Minimization", CVPR 2024, Alg. 1.
"""

from __future__ import annotations

from collections.abc import Sequence


def ema_update(ema: Sequence, gradients: Sequence, decay: float) -> list:
    """`m_t = lambda * m_{t-1} + (1 - lambda) * g_t` (F-SAM Alg. 1, line 5).

    The EMA starts at zero (`m_{-1} = 0`) and is fed the clean gradient, never
    the modified direction (pytorch_optimizer's trap).
    """
    return [decay * m + (1.0 - decay) * g for m, g in zip(ema, gradients)]


def direction(gradients: Sequence, ema: Sequence, sigma: float) -> list:
    """`d_t = g_t - sigma * m_t` with the EMA already updated (Alg. 1, line 7).

    The official code subtracts the previous `m`; we follow the paper.
    """
    return [g - sigma * m for g, m in zip(gradients, ema)]
