"""SAMModel options: one specification of every option, and the presets.

Every SAM variant is a point on independent axes: the mask (`perturb`), the
direction source (`friendly`, `direction`), the geometry (fixed by the
method, refined by `adaptive`, `norm`, `eta`, `layer_scale`, ...), the
schedule (`start_step`, `reuse`, `k`, `policy`, `rho`) and the descent rule
(`descent`: what the update is once `g` and `g_s` exist). A preset names a
point and the hyperparameters its paper recommends; options given explicitly
override it. `OPTIONS` specifies each option once (its check, default and
where it applies); `resolve_options` applies it, and the errors,
`get_config` and the documentation tables follow from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from keras_sam.src.validation import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    is_real,
)


class _Unset:
    """The default of every option: "not given" (`None` is a value)."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Any = _Unset()

NUCLEAR_GEOMETRIES = ("nuclear", "nuclear_norm")


class Point(NamedTuple):
    """What decides where an option applies: the method's geometry and the
    structural options."""

    geometry: str
    friendly: bool
    reuse: str | None
    policy: str = "periodic"
    descent: str = "sam"
    direction: str = "gradient"


# ---- Checks -----------------------------------------------------------------


def _received(name: str, value: Any) -> str:
    return f"received {name}={value!r}."


def _check_one_argument(name: str, value: Callable, argument: str) -> None:
    """Raises a `TypeError` if `value`, an option that keras-sam calls with
    one positional argument (`argument`), cannot take it: the step would
    fail inside `fit` otherwise."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # no signature to read: called as given
        return
    try:
        signature.bind(0)
    except TypeError:
        raise TypeError(
            f"`{name}` is called with one argument, {argument}, and "
            f"this one takes {signature}; " + _received(name, value)
        ) from None


def _float_or_schedule(floats: str, valid) -> Callable[[str, Any], None]:
    """The check of an option that is a float (`floats` says which, `valid`
    tests one) or a schedule of the SAM step."""
    allowed = (
        f"{floats}, a keras.optimizers.schedules.LearningRateSchedule or a "
        "callable of the SAM step"
    )

    def check(name: str, value: Any) -> None:
        if is_real(value):
            if not (math.isfinite(value) and valid(value)):
                raise ValueError(
                    f"`{name}` must be {allowed}; " + _received(name, value)
                )
        elif not callable(value):
            raise TypeError(
                f"`{name}` must be {allowed}; " + _received(name, value)
            )
        else:
            _check_one_argument(name, value, "the SAM step")

    return check


_check_rho = _float_or_schedule("a float >= 0", lambda v: v >= 0)
_check_threshold = _float_or_schedule("a finite float", lambda v: True)
_check_probability = _float_or_schedule(
    "a float in [0, 1]", lambda v: 0.0 <= v <= 1.0
)


PERTURB_MASKS = ("all", "norm", "no_norm")


def _check_perturb(name: str, value: Any) -> None:
    if isinstance(value, str):
        check_choice(name, value, PERTURB_MASKS)
    elif not callable(value):
        raise TypeError(
            f"`perturb` must be one of {list(PERTURB_MASKS)} or a callable "
            "`variable -> bool`; " + _received(name, value)
        )
    else:
        _check_one_argument(name, value, "a variable")


def _check_fraction(name: str, value: Any) -> None:
    if value is None:
        return
    allowed = "None or a float in (0, 1]"
    if not is_real(value):
        raise TypeError(
            f"`{name}` must be {allowed}; " + _received(name, value)
        )
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            f"`{name}` must be {allowed}; " + _received(name, value)
        )


def _choice(*allowed) -> Callable[[str, Any], None]:
    return lambda name, value: check_choice(name, value, allowed)


def _real(low, high=None, high_allowed=False) -> Callable[[str, Any], None]:
    return lambda name, value: check_real(name, value, low, high, high_allowed)


def _int(low: int) -> Callable[[str, Any], None]:
    return lambda name, value: check_int(name, value, low)


# ---- The specification ----------------------------------------------------


def _always(point: Point) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of `SAMModel`.

    Attributes:
        name: the keyword.
        check: `(name, value) -> None`; raises a `TypeError` or `ValueError`
            that names the option, the value and what is allowed.
        default: the value when neither the call nor the preset sets one: a
            constant, or a function of the `Point`.
        summary: what it does, in one line (the documentation tables).
        applies: `Point -> bool`: where the option applies. Elsewhere giving
            it is an error and its resolved value is `None`.
        where: where it applies, in words, for that error.
        converts: what a given value is stored as (`float` for the real
            options; a callable or a schedule is kept as it is), or `None`:
            as given.
    """

    name: str
    check: Callable[[str, Any], None]
    default: Any
    summary: str
    applies: Callable[[Point], bool] = _always
    where: str = ""
    converts: Callable[[Any], Any] | None = None

    def default_at(self, point: Point) -> Any:
        return self.default(point) if callable(self.default) else self.default


OPTIONS: tuple[Option, ...] = (
    Option(
        "rho",
        _check_rho,
        0.05,
        "the radius: a float >= 0, a LearningRateSchedule or a callable of "
        "the SAM step",
        converts=float,
    ),
    Option(
        "perturb",
        _check_perturb,
        "all",
        "which variables are perturbed: 'all', 'norm', 'no_norm' or a "
        "callable variable -> bool",
    ),
    Option(
        "start_step",
        _int(0),
        0,
        "steps before this one are plain base-optimizer steps",
    ),
    Option(
        "late_phase",
        _check_fraction,
        None,
        "late-phase SAM: the last fraction (0, 1] of the first fit's steps "
        "takes SAM steps, the ones before are plain; None: start_step",
        converts=float,
    ),
    Option(
        "adaptive",
        _choice("elementwise", "layerwise"),
        "elementwise",
        "ASAM's operator: 'elementwise' (|w| + eta) or 'layerwise' "
        "(||w_i|| + eta)",
        lambda p: p.geometry == "adaptive",
        "to the adaptive geometry (methods asam, fasam)",
    ),
    Option(
        "norm",
        _choice("l2", "linf"),
        "l2",
        "the ascent norm: 'l2', or 'linf' (l2 and adaptive geometries)",
    ),
    Option(
        "eta",
        _real(0.0),
        lambda p: {"adaptive": 0.01, "fisher": 1.0}[p.geometry],
        "ASAM's or Fisher-SAM's eta",
        lambda p: p.geometry in ("adaptive", "fisher"),
        "to the adaptive and fisher geometries (methods asam, fasam, fisher)",
        converts=float,
    ),
    Option(
        "normalize_bias",
        check_bool,
        False,
        "ASAM: rescale bias-like variables too",
        lambda p: p.geometry == "adaptive",
        "to the adaptive geometry (methods asam, fasam)",
    ),
    Option(
        "layer_scale",
        _choice("eq7", "layer", "global"),
        "global",
        "LayerSAM's scale: 'global' (rho ||w_i|| / ||w||), 'layer' "
        "(rho ||w_i||) or 'eq7' (rho ||w_i|| / ||g||) per variable",
        lambda p: p.geometry == "layer",
        "to the layer geometry (methods layersam, looklayersam)",
    ),
    Option(
        "friendly",
        check_bool,
        False,
        "F-SAM: ascend along g - sigma * m, m an EMA of the gradients",
    ),
    Option(
        "direction",
        _choice("gradient", "momentum"),
        "gradient",
        "what the ascent follows: 'gradient' (this step's, from pass 1) or "
        "'momentum' (MSAM: the look-ahead -m, m an EMA of the gradients, "
        "where the step's one pass runs)",
    ),
    Option(
        "ema_decay",
        _real(0.0, 1.0),
        0.9,
        "the decay of the EMA m of the gradients: F-SAM's lambda, MSAM's "
        "momentum mu",
        lambda p: p.friendly or p.direction == "momentum",
        "with friendly=True (F-SAM) or direction='momentum' (MSAM)",
        converts=float,
    ),
    Option(
        "sigma",
        _real(0.0),
        1.0,
        "F-SAM's sigma",
        lambda p: p.friendly,
        "with friendly=True (F-SAM)",
        converts=float,
    ),
    Option(
        "reuse",
        _choice(None, "look", "every_k"),
        None,
        "between ascents: None (no reuse), 'look' (LookSAM) or 'every_k' "
        "(SAM-k)",
    ),
    Option(
        "k",
        _int(1),
        5,
        "the period of the ascents with reuse",
        lambda p: p.reuse is not None and p.policy == "periodic",
        "with reuse='look' or reuse='every_k' and policy='periodic'",
    ),
    Option(
        "alpha",
        _real(0.0, 1.0, high_allowed=True),
        0.7,
        "LookSAM's reuse weight",
        lambda p: p.reuse == "look",
        "with reuse='look'",
        converts=float,
    ),
    Option(
        "reuse_scale",
        _choice("gradient", "stored", "relative"),
        "stored",
        "LookSAM's reuse term: 'gradient' (alpha ||g|| / ||g_v|| g_v, Alg. "
        "1), 'stored' (alpha g_v) or 'relative' (alpha ||g|| / ||g_a|| g_v)",
        lambda p: p.reuse == "look",
        "with reuse='look'",
    ),
    Option(
        "policy",
        _choice("periodic", "adaptive", "random"),
        "periodic",
        "when to ascend: 'periodic' (every step, or every k-th with reuse), "
        "'adaptive' (AE-SAM: when ||g||^2 >= mu + c * sigma) or 'random' "
        "(RST: with probability p_t)",
    ),
    Option(
        "policy_decay",
        _real(0.0, 1.0),
        0.9,
        "AE-SAM's delta, the decay of the running mean and variance of ||g||^2",
        lambda p: p.policy == "adaptive",
        "with policy='adaptive' (AE-SAM)",
        converts=float,
    ),
    Option(
        "policy_threshold",
        _check_threshold,
        0.0,
        "AE-SAM's c_t: a float, a LearningRateSchedule or a callable of the "
        "SAM step",
        lambda p: p.policy == "adaptive",
        "with policy='adaptive' (AE-SAM)",
        converts=float,
    ),
    Option(
        "ascent_probability",
        _check_probability,
        0.5,
        "RST's p_t: a float in [0, 1], a LearningRateSchedule or a callable "
        "of the SAM step",
        lambda p: p.policy == "random",
        "with policy='random' (RST)",
        converts=float,
    ),
    Option(
        "policy_seed",
        _int(0),
        0,
        "RST's seed: the draws are a hash of it and the SAM step, the same "
        "on every backend",
        lambda p: p.policy == "random",
        "with policy='random' (RST)",
    ),
    Option(
        "power_iterations",
        _int(1),
        1,
        "nuSAM's warm-started power iterations per ascent",
        lambda p: p.geometry in NUCLEAR_GEOMETRIES,
        "to the nuclear geometries (methods nusam, nusam_norm)",
    ),
    Option(
        "descent",
        _choice("sam", "gsam", "wsam"),
        "sam",
        "the update of an ascent step: 'sam' (g_s), 'gsam' (g_s - alpha "
        "g_perp) or 'wsam' (g + gamma / (1 - gamma) (g_s - g))",
    ),
    Option(
        "gsam_alpha",
        _real(0.0),
        0.6,
        "GSAM's alpha, the weight of the ascent along g_perp",
        lambda p: p.descent == "gsam",
        "with descent='gsam' (GSAM)",
        converts=float,
    ),
    Option(
        "gamma",
        _real(0.0, 1.0),
        0.97,
        "WSAM's gamma: the sharpness term weighs gamma / (1 - gamma)",
        lambda p: p.descent == "wsam",
        "with descent='wsam' (WSAM)",
        converts=float,
    ),
    Option(
        "decoupled",
        check_bool,
        True,
        "WSAM: apply the sharpness term outside the base optimizer (Alg. "
        "1); False feeds the weighted gradient to it",
        lambda p: p.descent == "wsam",
        "with descent='wsam' (WSAM)",
    ),
    Option(
        "ascent",
        _choice("global", "per_replica"),
        "global",
        "the gradient of the ascent on many devices: 'global' or 'per_replica'",
    ),
    Option(
        "batch_splits",
        _int(1),
        1,
        "m-sharpness: the micro-batches of a batch (of each replica's with "
        "ascent='per_replica'), each ascending along its own gradient",
    ),
)
OPTION_NAMES: tuple[str, ...] = tuple(o.name for o in OPTIONS)
_BY_NAME = {o.name: o for o in OPTIONS}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named point of the method space.

    Attributes:
        geometry: how the direction becomes the perturbation.
        values: the options the preset sets (its radius, the point's
            structural options and its paper's other hyperparameters);
            every other option takes its default. The sources of each value
            are in docs/hyperparameters.md.
        paper: the paper that defines the method.
    """

    geometry: str
    values: Mapping[str, Any]
    paper: str


PRESETS: dict[str, Preset] = {
    "sam": Preset("l2", {"rho": 0.05}, "Foret et al., ICLR 2021"),
    "samon": Preset(
        "l2", {"rho": 1.0, "perturb": "norm"}, "Mueller et al., NeurIPS 2023"
    ),
    "asam": Preset("adaptive", {"rho": 0.2}, "Kwon et al., ICML 2021"),
    "fisher": Preset("fisher", {"rho": 0.1}, "Kim et al., ICML 2022"),
    "fsam": Preset(
        "l2", {"rho": 0.05, "friendly": True}, "Li et al., CVPR 2024"
    ),
    "fasam": Preset(
        "adaptive", {"rho": 0.2, "friendly": True}, "Li et al., CVPR 2024"
    ),
    "layersam": Preset("layer", {"rho": 0.2}, "Liu et al., 2022"),
    "looksam": Preset("l2", {"rho": 0.05, "reuse": "look"}, "Liu et al., 2022"),
    "looklayersam": Preset(
        "layer",
        {"rho": 0.1, "reuse": "look", "reuse_scale": "relative"},
        "Liu et al., 2022",
    ),
    "samk": Preset(
        "l2", {"rho": 0.2, "reuse": "every_k", "k": 2}, "Liu et al., 2022"
    ),
    "nusam": Preset("nuclear", {"rho": 0.1}, "Ahn et al., 2024"),
    "nusam_norm": Preset("nuclear_norm", {"rho": 0.2}, "Ahn et al., 2024"),
    "gsam": Preset(
        "l2",
        {"rho": 0.05, "descent": "gsam", "gsam_alpha": 0.6},
        "Zhuang et al., ICLR 2022",
    ),
    "wsam": Preset(
        "l2",
        {"rho": 0.05, "descent": "wsam", "decoupled": True},
        "Yue et al., KDD 2023",
    ),
    "msam": Preset(
        "l2",
        {"rho": 0.3, "direction": "momentum"},
        "Becker et al., 2024",
    ),
}


@dataclasses.dataclass(frozen=True)
class SAMOptions:
    """The resolved, validated options of a `SAMModel`: the preset applied,
    the defaults filled in. Options that do not apply to the chosen point of
    the method space are `None` (for example `k` without `reuse`).

    The fields after `geometry` are those of `OPTIONS`, in its order; each
    is documented in `SAMModel`.
    """

    method: str
    geometry: str
    rho: float | Callable
    perturb: str | Callable
    start_step: int
    late_phase: float | None
    adaptive: str | None
    norm: str
    eta: float | None
    normalize_bias: bool | None
    layer_scale: str | None
    friendly: bool
    direction: str
    ema_decay: float | None
    sigma: float | None
    reuse: str | None
    k: int | None
    alpha: float | None
    reuse_scale: str | None
    policy: str
    policy_decay: float | None
    policy_threshold: float | Callable | None
    ascent_probability: float | Callable | None
    policy_seed: int | None
    power_iterations: int | None
    descent: str
    gsam_alpha: float | None
    gamma: float | None
    decoupled: bool | None
    ascent: str
    batch_splits: int

    def given(self) -> dict[str, Any]:
        """Every option that applies, as keywords: what `get_config` saves,
        so that a loaded model keeps these values even if a preset's defaults
        change."""
        point = Point(*(getattr(self, name) for name in Point._fields))
        return {
            o.name: getattr(self, o.name) for o in OPTIONS if o.applies(point)
        }


def _check_method(method: Any) -> Preset:
    if not isinstance(method, str):
        raise TypeError(
            f"`method` must be a string, one of {sorted(PRESETS)}; "
            + _received("method", method)
        )
    if method not in PRESETS:
        raise ValueError(
            f"Unknown `method`: {method!r}. Available presets: "
            f"{sorted(PRESETS)}."
        )
    return PRESETS[method]


def check_option_names(names) -> None:
    """Raises for a keyword that is not an option."""
    unknown = sorted(set(names) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"Unknown SAMModel option(s) {unknown}. The options are "
            f"{list(OPTION_NAMES)} (and `method`); keras.Model takes `name`, "
            "`dtype` and `trainable`."
        )


def _value(option: Option, given: dict, preset: Preset, point) -> Any:
    value = given.get(option.name, UNSET)
    if value is UNSET:
        value = preset.values.get(option.name, UNSET)
    if value is UNSET:
        value = option.default_at(point)
    option.check(option.name, value)
    return value


def _check_linf(method: str, geometry: str, norm: str) -> None:
    if norm == "linf" and geometry not in ("l2", "adaptive"):
        raise ValueError(
            "`norm='linf'` applies only to the l2 and adaptive geometries "
            "(methods sam, samon, asam, fsam, fasam, looksam, samk); method "
            f"{method!r} uses the {geometry!r} geometry. Received norm='linf'."
        )


def _check_policy(policy: str, reuse: str | None) -> None:
    if policy != "periodic" and reuse == "every_k":
        decides = {
            "adaptive": "the gradient norm decides (AE-SAM)",
            "random": "a draw decides (RST)",
        }[policy]
        raise ValueError(
            "`reuse='every_k'` (SAM-k) ascends every k steps; with "
            f"policy={policy!r} {decides}, and the steps without ascent are "
            "plain with reuse=None or reuse the orthogonal component with "
            f"reuse='look'. Received reuse='every_k', policy={policy!r}."
        )


# What MSAM's one pass cannot do: (option, its value without MSAM, why).
_NOT_WITH_MOMENTUM = (
    ("friendly", False, "F-SAM's direction is g - sigma m"),
    ("reuse", None, "every step is one pass already"),
    ("policy", "periodic", "no step takes a second pass"),
    ("descent", "sam", "the step has no clean gradient g beside g_s"),
    ("ascent", "global", "the ascent follows the one global momentum"),
    ("batch_splits", 1, "the ascent follows the one global momentum"),
)


def _check_momentum(method: str, geometry: str, values: dict) -> None:
    """Raises for what `direction='momentum'` (MSAM) does not combine with:
    its one pass has no clean gradient, and its ascent no other source."""
    if values["direction"] != "momentum":
        return
    if geometry not in ("l2", "adaptive", "layer"):
        raise ValueError(
            "`direction='momentum'` (MSAM) applies to the l2, adaptive and "
            "layer geometries (e.g. methods sam, asam, layersam, msam); "
            f"method {method!r} uses the {geometry!r} geometry, which reads "
            "this step's gradient. Received direction='momentum'."
        )
    if values["layer_scale"] == "eq7":
        raise ValueError(
            "`direction='momentum'` (MSAM) takes the layer geometry with "
            "layer_scale='global' or 'layer': 'eq7' scales by this step's "
            "gradient norm, which MSAM's look-ahead precedes. Received "
            "direction='momentum', layer_scale='eq7'."
        )
    for name, plain, why in _NOT_WITH_MOMENTUM:
        if values[name] != plain:
            raise ValueError(
                f"`direction='momentum'` (MSAM) takes one pass per step, at "
                f"the look-ahead w - rho m / ||m||: it needs {name}="
                f"{plain!r} ({why}); " + _received(name, values[name])
            )


def _check_late_phase(late_phase: float | None, start_step: int) -> None:
    if late_phase is not None and start_step != 0:
        raise ValueError(
            "`late_phase` sets the first SAM step from the length of fit; "
            "give it or `start_step`, not both. Received "
            f"late_phase={late_phase!r}, start_step={start_step!r}."
        )


def resolve_options(method: str = "sam", **given: Any) -> SAMOptions:
    """Applies the preset of `method`, then the options given; checks all.

    An option that is not given (or is `UNSET`) takes the preset's value,
    or else its default. An option given where it does not apply raises
    before its value is checked.

    Raises:
        ValueError: for an unknown method or choice, a value out of range, or
            an option given for a method it does not apply to.
        TypeError: for a value of the wrong type or an unknown option.
    """
    check_option_names(given)
    given = {n: v for n, v in given.items() if v is not UNSET}
    preset = _check_method(method)
    partial = Point(preset.geometry, False, None)
    point = Point(
        preset.geometry,
        *(
            _value(_BY_NAME[name], given, preset, partial)
            for name in Point._fields[1:]  # the structural options
        ),
    )
    values = {}
    for option in OPTIONS:
        if option.applies(point):
            values[option.name] = _value(option, given, preset, point)
        elif option.name in given:
            raise ValueError(
                f"`{option.name}` applies only {option.where}; "
                + _received(option.name, given[option.name])
            )
        else:
            values[option.name] = None
    _check_linf(method, preset.geometry, values["norm"])
    _check_policy(values["policy"], values["reuse"])
    _check_momentum(method, preset.geometry, values)
    _check_late_phase(values["late_phase"], values["start_step"])
    for option in OPTIONS:
        value = values[option.name]
        if option.converts and value is not None and not callable(value):
            values[option.name] = option.converts(value)
    return SAMOptions(method=method, geometry=preset.geometry, **values)
