"""Which variables take part in a SAM step, decided once per compile.

The plan depends on the options and on which variables are trainable, which
Keras fixes at `compile()` (and `build()`); the train step reads it and
never rebuilds it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import keras

from keras_sam.src.layers.matrices import WeightMatrix, weight_matrices
from keras_sam.src.methods import geometry as geometries
from keras_sam.src.methods import masks
from keras_sam.src.methods.geometry import BIAS_NAMES, Geometry
from keras_sam.src.options import NUCLEAR_GEOMETRIES, SAMOptions


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Which trainable variables take part in the step.

    Attributes:
        variable_ids: `id()` of every trainable variable when the plan was
            made (a plan is stale once they change).
        gradient_indices: indices into `trainable_variables` of the float
            variables that receive a SAM gradient (not float8
            `overwrite_with_gradient` variables); LookSAM's norms run over
            them.
        perturbed_indices: the subset selected by `perturb` (and, for the
            nuclear geometries, the weight matrices among them).
        geometry: the geometry bound to the perturbed variables (`None` for
            the nuclear geometries).
        matrices: each perturbed weight matrix (nuclear geometries only).
        ascends_every_step: no `reuse`, no `start_step` or `late_phase`, the
            periodic policy: every step takes an ascent, so the step has no
            conditional.
        looks_ahead: MSAM (`direction="momentum"`): pass 1 runs at the
            momentum's look-ahead and its gradient is the update; no step
            takes a second pass.
        clean_indices: the variables pass 1 differentiates: all, or when
            every step ascends and the descent is SAM's, all but the
            unperturbed ones of the SAM gradient (SAM-ON's pass 1 never
            computes the other weight gradients; pass 2 gives theirs).
        keeps_gradient: whether the clean gradient is read after pass 2
            (LookSAM's projection, the descent rules of GSAM and WSAM).
        pairs_in_pass_one: whether a backend that can may run nuSAM's
            power iterations within pass 1's backward pass instead of
            computing the weight matrices' gradients (`probes.py`): a
            nuclear geometry whose step reads those gradients only through
            their singular pairs (every step ascends along the one global
            gradient, no F-SAM, LookSAM or descent rule), on layers that
            are matrix products of their flattened input.
    """

    variable_ids: tuple[int, ...]
    gradient_indices: tuple[int, ...]
    perturbed_indices: tuple[int, ...]
    geometry: Geometry | None
    matrices: tuple[WeightMatrix, ...]
    ascends_every_step: bool
    looks_ahead: bool
    clean_indices: tuple[int, ...]
    keeps_gradient: bool
    pairs_in_pass_one: bool

    def has_gradient(
        self, pass_one: tuple[bool, ...], pass_two: tuple[bool, ...] = ()
    ) -> tuple[bool, ...]:
        """Whether each trainable variable has a gradient for the base
        optimizer: pass 1 says (`pass_one`) for the variables it
        differentiates, `clean_indices`; pass 2 (`pass_two`, of the
        ascent) for the others, which exist only when every step ascends
        (and then `pass_two` is given)."""
        clean = set(self.clean_indices)
        return tuple(
            one if i in clean else pass_two[i] for i, one in enumerate(pass_one)
        )


def _gradient_indices(variables: list) -> list[int]:
    return [
        i
        for i, v in enumerate(variables)
        if keras.backend.is_float_dtype(v.dtype)
        and not getattr(v, "overwrite_with_gradient", False)
    ]


def _perturbed(options: SAMOptions, model, variables, gradient_indices):
    if not gradient_indices:
        raise ValueError(
            f"Model {model.name!r} has no trainable float variables, so "
            "there is nothing to perturb (is it frozen?)."
        )
    selected = masks.select(
        options.perturb, model, [variables[i] for i in gradient_indices]
    )
    perturbed = [i for i, s in zip(gradient_indices, selected) if s]
    if not perturbed:
        raise ValueError(
            f"`perturb={options.perturb!r}` selects none of the "
            f"{len(gradient_indices)} trainable float variables of model "
            f"{model.name!r}; nothing would be perturbed."
        )
    return perturbed


def _matrices(options: SAMOptions, model, variables, perturbed):
    matrices = weight_matrices(model)
    perturbed = [i for i in perturbed if id(variables[i]) in matrices]
    if not perturbed:
        raise ValueError(
            f"method {options.method!r} perturbs the kernels of Dense and "
            "EinsumDense layers, and none of them is trainable and selected "
            f"by perturb={options.perturb!r} in model {model.name!r}."
        )
    return perturbed, tuple(matrices[id(variables[i])] for i in perturbed)


def make_geometry(options: SAMOptions, variables: Sequence) -> Geometry:
    """The geometry of `options`, bound to the perturbed `variables`."""
    if options.geometry == "l2":
        return functools.partial(geometries.l2, norm=options.norm)
    if options.geometry == "adaptive":
        scaled = [
            bool(options.normalize_bias) or v.name not in BIAS_NAMES
            for v in variables
        ]
        return functools.partial(
            geometries.adaptive,
            eta=options.eta,
            layerwise=options.adaptive == "layerwise",
            scaled=scaled,
            norm=options.norm,
        )
    if options.geometry == "fisher":
        return functools.partial(geometries.fisher, eta=options.eta)
    if options.geometry == "layer":
        return functools.partial(geometries.layer, scale=options.layer_scale)
    raise ValueError(f"Unknown geometry: {options.geometry!r}.")


def make_plan(
    options: SAMOptions, model: keras.layers.Layer, variables: list
) -> StepPlan:
    """The plan for `model`'s trainable `variables` under `options`.

    Raises:
        ValueError: nothing to perturb (a frozen model, a mask that selects
            nothing, no weight matrix for the nuclear geometries).
    """
    gradient_indices = _gradient_indices(variables)
    perturbed = _perturbed(options, model, variables, gradient_indices)
    geometry, matrices = None, ()
    if options.geometry in NUCLEAR_GEOMETRIES:
        perturbed, matrices = _matrices(options, model, variables, perturbed)
    else:
        geometry = make_geometry(options, [variables[i] for i in perturbed])
    looks_ahead = options.direction == "momentum"
    every_step = (
        options.reuse is None
        and options.start_step == 0
        and options.late_phase is None
        and options.policy == "periodic"
        and not looks_ahead
    )
    keeps_gradient = options.reuse == "look" or options.descent != "sam"
    clean = range(len(variables))
    if every_step and options.descent == "sam":
        unread = set(gradient_indices) - set(perturbed)
        clean = [i for i in clean if i not in unread]
    return StepPlan(
        variable_ids=tuple(id(v) for v in variables),
        gradient_indices=tuple(gradient_indices),
        perturbed_indices=tuple(perturbed),
        geometry=geometry,
        matrices=matrices,
        ascends_every_step=every_step,
        looks_ahead=looks_ahead,
        clean_indices=tuple(clean),
        keeps_gradient=keeps_gradient,
        pairs_in_pass_one=_pairs_in_pass_one(
            options, matrices, every_step and not keeps_gradient
        ),
    )


def _pairs_in_pass_one(
    options: SAMOptions,
    matrices: tuple[WeightMatrix, ...],
    reads_only_the_ascent: bool,
) -> bool:
    return (
        bool(matrices)
        and reads_only_the_ascent
        and not options.friendly
        and options.batch_splits == 1
        and options.ascent == "global"
        and all(m.factorised and m.flat for m in matrices)
    )
