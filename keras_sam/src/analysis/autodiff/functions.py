"""What every backend's `compile_loss` returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Functions(NamedTuple):
    """A scalar function of a list of tensors and its derivatives."""

    value: Callable  # (values, context) -> loss
    value_and_gradient: Callable  # (values, context) -> (loss, gradients)
    hvp: Callable  # (values, vector, context) -> H @ vector
