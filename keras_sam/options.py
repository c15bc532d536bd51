"""SAMModel options: the presets of the method space and their validation.

Every SAM variant is a point on four independent axes (DESIGN §2): the mask
(`perturb`), the direction source (`friendly`), the geometry (fixed by the
method) and the schedule (`start_step`, `reuse`, `k`, `rho`). A preset names a
point; options given explicitly override it. Every value is checked here, once,
at construction, with an error that names the option, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import keras

# preset name -> (geometry, preset overrides).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "sam": ("l2", {}),
    "samon": ("l2", {"perturb": "norm"}),
    "asam": ("adaptive", {}),
    "fisher": ("fisher", {}),
    "fsam": ("l2", {"friendly": True}),
    "fasam": ("adaptive", {"friendly": True}),
    "layersam": ("layer", {}),
    "looksam": ("l2", {"reuse": "look"}),
    "looklayersam": ("layer", {"reuse": "look"}),
    "samk": ("l2", {"reuse": "every_k"}),
    "nusam": ("nuclear", {}),
    "nusam_norm": ("nuclear_norm", {}),
}

PERTURB_MASKS = ("all", "norm", "no_norm")
ADAPTIVE_SCALINGS = ("elementwise", "layerwise")
NORMS = ("l2", "linf")
REUSE_MODES = (None, "look", "every_k")
ASCENT_MODES = ("global", "per_replica")

# Geometries that take the option; the default comes from the geometry.
_ETA_DEFAULTS = {"adaptive": 0.01, "fisher": 1.0}
_LINF_GEOMETRIES = ("l2", "adaptive")
NUCLEAR_GEOMETRIES = ("nuclear", "nuclear_norm")


@dataclasses.dataclass(frozen=True)
class SAMOptions:
    """The resolved, validated options of a `SAMModel`.

    Options that do not apply to the chosen point of the method space are
    `None` (for example `k` without `reuse`).
    """

    method: str
    geometry: str
    rho: float | Callable
    perturb: str | Callable
    start_step: int
    adaptive: str | None
    norm: str
    eta: float | None
    normalize_bias: bool | None
    friendly: bool
    ema_decay: float | None
    sigma: float | None
    reuse: str | None
    k: int | None
    alpha: float | None
    power_iterations: int | None
    ascent: str


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {list(allowed)}; received "
            f"{name}={value!r}."
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be True or False; received {name}={value!r}."
        )


def check_real(
    name: str,
    value: Any,
    low: float,
    high: float | None,
    high_allowed: bool = False,
) -> None:
    """Checks `low <= value < high` (`<= high` with `high_allowed`;
    `high=None`: no upper bound)."""
    if high is None:
        allowed = f"a float >= {low}"
    else:
        allowed = f"a float in [{low}, {high}{']' if high_allowed else ')'}"
    if not _is_real(value):
        raise TypeError(
            f"`{name}` must be {allowed}; received {name}={value!r}."
        )
    above = high is not None and (
        value > high if high_allowed else value >= high
    )
    if not math.isfinite(value) or value < low or above:
        raise ValueError(
            f"`{name}` must be {allowed}; received {name}={value!r}."
        )


def _check_int(name: str, value: Any, low: int) -> None:
    if not _is_int(value):
        raise TypeError(
            f"`{name}` must be an int >= {low}; received {name}={value!r}."
        )
    if value < low:
        raise ValueError(
            f"`{name}` must be an int >= {low}; received {name}={value!r}."
        )


def _check_rho(rho: Any) -> None:
    allowed = (
        "a float >= 0, a keras.optimizers.schedules.LearningRateSchedule or a "
        "callable of the SAM step"
    )
    if isinstance(rho, keras.optimizers.schedules.LearningRateSchedule):
        return
    if _is_real(rho):
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"`rho` must be {allowed}; received rho={rho!r}.")
        return
    if callable(rho):
        return
    raise TypeError(f"`rho` must be {allowed}; received rho={rho!r}.")


def _only_for(name: str, value: Any, applies: bool, where: str) -> None:
    if value is not None and not applies:
        raise ValueError(
            f"`{name}` applies only {where}; received {name}={value!r}."
        )


def resolve_options(
    method: str = "sam",
    rho: Any = 0.05,
    *,
    perturb: Any = None,
    start_step: int | None = None,
    adaptive: str | None = None,
    norm: str | None = None,
    eta: float | None = None,
    normalize_bias: bool | None = None,
    friendly: bool | None = None,
    ema_decay: float | None = None,
    sigma: float | None = None,
    reuse: str | None = None,
    k: int | None = None,
    alpha: float | None = None,
    power_iterations: int | None = None,
    ascent: str | None = None,
) -> SAMOptions:
    """Applies the preset of `method`, then the explicit options; checks all.

    An option left as `None` takes the preset's value, or the default of
    DESIGN §1. `reuse` cannot be reset to `None` explicitly (use a preset
    without reuse instead).

    Raises:
        ValueError: for an unknown method or choice, a value out of range, or
            an option given for a method it does not apply to.
        TypeError: for a value of the wrong type.
    """
    if not isinstance(method, str):
        raise TypeError(
            f"`method` must be a string, one of {sorted(PRESETS)}; received "
            f"method={method!r}."
        )
    if method not in PRESETS:
        raise ValueError(
            f"Unknown `method`: {method!r}. Available presets: "
            f"{sorted(PRESETS)}."
        )
    geometry, preset = PRESETS[method]
    _check_rho(rho)

    perturb = preset.get("perturb", "all") if perturb is None else perturb
    if isinstance(perturb, str):
        _check_choice("perturb", perturb, PERTURB_MASKS)
    elif not callable(perturb):
        raise TypeError(
            f"`perturb` must be one of {list(PERTURB_MASKS)} or a callable "
            f"`variable -> bool`; received perturb={perturb!r}."
        )

    start_step = 0 if start_step is None else start_step
    _check_int("start_step", start_step, 0)

    _only_for(
        "adaptive",
        adaptive,
        geometry == "adaptive",
        "to the adaptive geometry (methods asam, fasam)",
    )
    if geometry == "adaptive":
        adaptive = "elementwise" if adaptive is None else adaptive
        _check_choice("adaptive", adaptive, ADAPTIVE_SCALINGS)

    norm = "l2" if norm is None else norm
    _check_choice("norm", norm, NORMS)
    if norm == "linf" and geometry not in _LINF_GEOMETRIES:
        raise ValueError(
            f"`norm='linf'` applies only to the l2 and adaptive geometries "
            f"(methods sam, samon, asam, fsam, fasam, looksam, samk); method "
            f"{method!r} uses the {geometry!r} geometry. Received norm='linf'."
        )

    _only_for(
        "eta",
        eta,
        geometry in _ETA_DEFAULTS,
        "to the adaptive and fisher geometries (methods asam, fasam, fisher)",
    )
    if geometry in _ETA_DEFAULTS:
        eta = _ETA_DEFAULTS[geometry] if eta is None else eta
        check_real("eta", eta, 0.0, None)

    _only_for(
        "normalize_bias",
        normalize_bias,
        geometry == "adaptive",
        "to the adaptive geometry (methods asam, fasam)",
    )
    if geometry == "adaptive":
        normalize_bias = False if normalize_bias is None else normalize_bias
        _check_bool("normalize_bias", normalize_bias)

    friendly = preset.get("friendly", False) if friendly is None else friendly
    _check_bool("friendly", friendly)
    _only_for("ema_decay", ema_decay, friendly, "with friendly=True (F-SAM)")
    _only_for("sigma", sigma, friendly, "with friendly=True (F-SAM)")
    if friendly:
        ema_decay = 0.9 if ema_decay is None else ema_decay
        check_real("ema_decay", ema_decay, 0.0, 1.0)
        sigma = 1.0 if sigma is None else sigma
        check_real("sigma", sigma, 0.0, None)

    reuse = preset.get("reuse") if reuse is None else reuse
    _check_choice("reuse", reuse, REUSE_MODES)
    _only_for("k", k, reuse is not None, "with reuse='look' or reuse='every_k'")
    _only_for("alpha", alpha, reuse == "look", "with reuse='look'")
    if reuse is not None:
        k = 5 if k is None else k
        _check_int("k", k, 1)
    if reuse == "look":
        alpha = 0.7 if alpha is None else alpha
        check_real("alpha", alpha, 0.0, 1.0, high_allowed=True)

    nuclear = geometry in NUCLEAR_GEOMETRIES
    _only_for(
        "power_iterations",
        power_iterations,
        nuclear,
        "to the nuclear geometries (methods nusam, nusam_norm)",
    )
    if nuclear:
        power_iterations = 1 if power_iterations is None else power_iterations
        _check_int("power_iterations", power_iterations, 1)

    ascent = "global" if ascent is None else ascent
    _check_choice("ascent", ascent, ASCENT_MODES)

    return SAMOptions(
        method=method,
        geometry=geometry,
        rho=rho,
        perturb=perturb,
        start_step=int(start_step),
        adaptive=adaptive,
        norm=norm,
        eta=None if eta is None else float(eta),
        normalize_bias=normalize_bias,
        friendly=friendly,
        ema_decay=None if ema_decay is None else float(ema_decay),
        sigma=None if sigma is None else float(sigma),
        reuse=reuse,
        k=None if k is None else int(k),
        alpha=None if alpha is None else float(alpha),
        power_iterations=power_iterations,
        ascent=ascent,
    )
