"""`SAMModel`: wraps any Keras model to train it with SAM or a variant."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_sam import backend as sam_backend
from keras_sam.methods import friendly as friendly_lib
from keras_sam.methods import masks, nuclear, schedule
from keras_sam.methods.geometry import Geometry, make_geometry, perturbation
from keras_sam.methods.matrices import MatrixView, weight_matrices
from keras_sam.methods.rank_one import RankOne
from keras_sam.methods.tensors import all_finite, to_float32
from keras_sam.options import (
    NUCLEAR_GEOMETRIES,
    OPTION_NAMES,
    UNSET,
    SAMOptions,
    check_option_names,
    resolve_options,
)
from keras_sam.replicas import ONE_REPLICA, Replicas
from keras_sam.serialization import deserialize_option, serialize_option


def _or_zeros(tensors: list, like: list, indices) -> list:
    """`tensors[i]`, or zeros shaped like `like[i]` where it is `None` (a
    variable without gradient), for each of `indices`."""
    return [
        ops.zeros_like(like[i]) if tensors[i] is None else tensors[i]
        for i in indices
    ]


def _unscaled(tensors: list, loss_scale) -> list:
    """The gradients in float32 and, under loss scaling, unscaled."""
    tensors = to_float32(tensors)
    if loss_scale is None:
        return tensors
    return [t / loss_scale for t in tensors]


def _constant(value):
    """An initializer returning `value` (a NumPy array of the right shape)."""

    def initializer(shape, dtype=None):
        return ops.cast(ops.convert_to_tensor(value), dtype or "float32")

    return initializer


# What `keras.Model` takes besides the options.
_KERAS_KEYWORDS = frozenset({"name", "dtype", "trainable", "autocast"})


class _StepCount(keras.metrics.Sum):
    """A count of steps, for the logs. `Sum.result()` on torch is the
    variable's own storage, which `evaluate()` resets in place while `fit`
    still holds the epoch's logs: the result here is a copy."""

    def result(self):
        return ops.copy(self.total)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Which trainable variables take part in the step (fixed per trace).

    Attributes:
        gradient_indices: indices into `trainable_variables` of the float
            variables that receive a SAM gradient (not float8
            `overwrite_with_gradient` variables); LookSAM's norms run over them.
        perturbed_indices: the subset selected by `perturb` (and, for the
            nuclear geometries, the weight matrices among them).
        geometry: the geometry bound to the perturbed variables (`None` for
            the nuclear geometries).
        views: the matrix view of each perturbed variable (nuclear
            geometries only, else empty).
        keeps_gradient: whether the clean gradient is read after pass 2
            (LookSAM's projection); if not, a backend may overwrite its
            buffers with pass 2's gradient.
        clean_indices: the variables that pass 1 differentiates: all of
            them, or, when every step takes an ascent (no `reuse`, no
            `start_step`) and so nothing reads the clean gradient of the
            unperturbed variables, the perturbed ones and those outside the
            SAM gradient (SAM-ON's pass 1 never computes the other weight
            gradients).
    """

    gradient_indices: tuple[int, ...]
    perturbed_indices: tuple[int, ...]
    geometry: Geometry | None
    views: tuple[MatrixView, ...]
    keeps_gradient: bool
    clean_indices: tuple[int, ...]


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(keras.Model):
    """Trains a Keras model with Sharpness-Aware Minimization or a variant.

    `SAMModel` wraps any `keras.Model` or layer; `compile()` and `fit()` work
    as usual, on the TensorFlow, JAX and PyTorch backends. Each training step
    computes the clean gradient `g` (pass 1, exactly as Keras does, with
    metrics, BatchNorm statistics and seed generators advancing once), a
    perturbation `eps`, and the gradient at `w + eps` (pass 2, functional:
    nothing it does to the model's state is kept), which the base optimizer
    then applies. Steps without an ascent (before `start_step`, or the reuse
    steps of LookSAM and SAM-k) run pass 1 only.

    The logs report the loss and metrics of the unperturbed weights, plus
    `sharpness = L(w + eps) - L(w)` averaged over the steps of the epoch that
    took an ascent.

    Every SAM variant is a point of four axes; `method` names a preset and the
    options override it:

    | method | geometry | friendly | reuse | perturb |
    | --- | --- | --- | --- | --- |
    | `"sam"` | l2 | no | none | all |
    | `"samon"` | l2 | no | none | norm |
    | `"asam"` | adaptive | no | none | all |
    | `"fisher"` | fisher | no | none | all |
    | `"fsam"` | l2 | yes | none | all |
    | `"fasam"` | adaptive | yes | none | all |
    | `"layersam"` | layer | no | none | all |
    | `"looksam"` | l2 | no | look | all |
    | `"looklayersam"` | layer | no | look | all |
    | `"samk"` | l2 | no | every_k | all |
    | `"nusam"` | nuclear | no | none | weight matrices |
    | `"nusam_norm"` | nuclear_norm | no | none | weight matrices |

    The nuclear geometries perturb only weight matrices (the kernels of
    `Dense` and `EinsumDense` layers, attention projections included) with
    one rank-1 perturbation each.

    Args:
        model: the `keras.Model` or `keras.layers.Layer` to train.
        method: the preset, one of the table above. Defaults to `"sam"`.
        rho: the perturbation radius: a float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            of the SAM step `t` (0 at `start_step`; passed as a float32
            scalar tensor). Defaults to `0.05`.
        perturb: which trainable variables are perturbed: `"all"`, `"norm"`
            (those of normalization layers, SAM-ON), `"no_norm"`, or a
            callable `variable -> bool`. Defaults to the preset's mask.
        start_step: steps before this one are plain base-optimizer steps.
            Defaults to `0`.
        adaptive: ASAM scaling, `"elementwise"` (`T = |w| + eta`) or
            `"layerwise"` (`T_i = ||w_i|| + eta`); adaptive geometry only.
            Defaults to `"elementwise"`.
        norm: the ascent norm, `"l2"` or `"linf"` (l2 and adaptive
            geometries). Defaults to `"l2"`.
        eta: the ASAM or Fisher-SAM `eta`. Defaults to `0.01` (adaptive) or
            `1.0` (fisher).
        normalize_bias: ASAM: rescale bias-like variables (`bias`, `beta`)
            too. Defaults to `False`.
        layer_scale: LayerSAM's scale of variable `i`'s perturbation:
            `"eq7"` (`rho * ||w_i|| / ||g||`, the paper's eq. 7, unbounded
            as the gradient shrinks), `"layer"` (`rho * ||w_i||`: a fraction
            `rho` of each variable's norm) or `"global"` (`rho * ||w_i|| /
            ||w||`: a total radius `rho`); layer geometry only. Defaults to
            `"eq7"`.
        friendly: F-SAM: ascend along `g - sigma * m`, `m` an EMA of the
            clean gradients. Defaults to the preset's value.
        ema_decay: F-SAM's `lambda`, in [0, 1). Defaults to `0.9`.
        sigma: F-SAM's `sigma`, >= 0. Defaults to `1.0`.
        reuse: `"look"` (LookSAM: reuse the orthogonal component `g_v` of the
            SAM gradient between ascents) or `"every_k"` (SAM-k: plain steps
            between ascents). Defaults to the preset's value.
        k: the period of the ascents with `reuse`, an int >= 1. Defaults
            to `5`.
        alpha: LookSAM's reuse weight, in [0, 1]. Defaults to `0.7`.
        reuse_scale: how LookSAM's reuse steps scale the stored `g_v` in
            `g + alpha * c * g_v`: `"gradient"` (`c = ||g|| / ||g_v||`,
            Alg. 1: a term of norm `alpha * ||g||` whatever `rho`),
            `"stored"` (`c = 1`: `g_v` as the last ascent measured it) or
            `"relative"` (`c = ||g|| / ||g_a||`, `g_a` the clean gradient of
            that ascent). Defaults to `"gradient"`.
        power_iterations: nuSAM's warm-started power iterations per ascent,
            an int >= 1 (nuclear geometries). Defaults to `1`.
        ascent: `"global"` (the ascent uses the global-batch gradient) or
            `"per_replica"` (each replica perturbs with its own gradient).
            Identical on one device. Defaults to `"global"`.
        **kwargs: passed to `keras.Model` (`name`, ...).

    Example:

    ```python
    model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    sam = keras_sam.SAMModel(model, method="looksam", rho=0.05)
    sam.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    sam.fit(x, y, epochs=5)
    sam.inner.save("model.keras")   # the wrapped model, for inference
    ```

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021. Kwon et al., "ASAM", ICML 2021. Kim et
        al., "Fisher SAM", ICML 2022. Mueller et al., "Normalization Layers
        Are All That Sharpness-Aware Minimization Needs", NeurIPS 2023. Li et
        al., "Friendly Sharpness-Aware Minimization", CVPR 2024. Liu et al.,
        "Sharpness-Aware Minimization in Large-Batch Training: Training
        Vision Transformer in Minutes", 2022.
    """

    def __init__(
        self,
        model: keras.layers.Layer,
        method: str = "sam",
        rho: float | Callable = UNSET,
        *,
        perturb: str | Callable = UNSET,
        start_step: int = UNSET,
        adaptive: str = UNSET,
        norm: str = UNSET,
        eta: float = UNSET,
        normalize_bias: bool = UNSET,
        layer_scale: str = UNSET,
        friendly: bool = UNSET,
        ema_decay: float = UNSET,
        sigma: float = UNSET,
        reuse: str | None = UNSET,
        k: int = UNSET,
        alpha: float = UNSET,
        reuse_scale: str = UNSET,
        power_iterations: int = UNSET,
        ascent: str = UNSET,
        **kwargs: Any,
    ):
        if isinstance(model, SAMModel):
            raise TypeError(
                "`model` is already a SAMModel; wrap its inner model instead "
                "(`SAMModel(sam_model.inner, ...)`) and choose the method "
                "there. Received model=" + repr(model) + "."
            )
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                "`model` must be a Keras model or layer (keras.Model or "
                f"keras.layers.Layer); received model={model!r} of type "
                f"{type(model).__name__}."
            )
        arguments = locals()
        options = resolve_options(
            method, **{name: arguments[name] for name in OPTION_NAMES}
        )
        if options.perturb == "norm" and not masks.normalization_layers(model):
            raise ValueError(
                "`perturb='norm'` (SAM-ON) perturbs only the variables of "
                "normalization layers (BatchNormalization, LayerNormalization, "
                "GroupNormalization, RMSNormalization and subclasses), and "
                f"model {model.name!r} has none. Use perturb='all', "
                "'no_norm' or a callable. Received perturb='norm'."
            )
        check_option_names(set(kwargs) - _KERAS_KEYWORDS)
        sam_backend.check_supported()
        super().__init__(**kwargs)
        sam_backend.on_create(self)
        self._inner = model
        self._options = options
        self._sharpness_tracker = keras.metrics.Mean(name="sharpness")
        self._skipped_tracker = _StepCount(name="sam_skipped")
        self._log_sharpness = False
        self._iterations = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="sam_iterations",
        )
        # Persistent state, keyed by the path of the trainable variable.
        self._ema: dict[str, keras.Variable] = {}
        self._g_v: dict[str, keras.Variable] = {}
        self._u: dict[str, keras.Variable] = {}
        if model.built:
            self._create_state()
            self.built = True

    @property
    def inner(self) -> keras.layers.Layer:
        """The wrapped model, for inference and export."""
        return self._inner

    @property
    def options(self) -> SAMOptions:
        """The resolved options (preset applied, defaults filled in)."""
        return self._options

    def call(self, inputs, training=None):
        return self._inner(inputs, training=training)

    def get_config(self) -> dict:
        """The wrapped model's config and every option given, for saving.

        Raises:
            ValueError: `rho` or `perturb` is a callable that Keras cannot
                rebuild (see `SAMModel` saving in the docs).
        """
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model": keras.saving.serialize_keras_object(self._inner),
        }
        config["method"] = self._options.method
        for name, value in self._options.given().items():
            config[name] = serialize_option(name, value)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> SAMModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        for name in ("rho", "perturb"):
            if name in config:
                config[name] = deserialize_option(config[name])
        return cls(model, **config)

    def build(self, input_shape=None):
        if not self._inner.built:
            # Build the wrapped model as Keras builds a layer on first call.
            self._inner(
                keras.tree.map_shape_structure(keras.KerasTensor, input_shape)
            )
        self._create_state()

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        if self.built:
            # Variables made trainable since the build (fine-tuning after
            # unfreezing, which Keras also requires a compile for) get state.
            self._create_state()

    def compile_from_config(self, config: dict) -> None:
        # Keras skips this for models that override `compile()`; ours only
        # adds state, so compile as `Trainer.compile_from_config` does.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # ---- State ------------------------------------------------------------

    def _plan(self) -> StepPlan:
        variables = self.trainable_variables
        gradient_indices = [
            i
            for i, v in enumerate(variables)
            if keras.backend.is_float_dtype(v.dtype)
            and not getattr(v, "overwrite_with_gradient", False)
        ]
        selected = masks.select(
            self._options.perturb,
            self._inner,
            [variables[i] for i in gradient_indices],
        )
        perturbed = [i for i, s in zip(gradient_indices, selected) if s]
        if not gradient_indices:
            raise ValueError(
                f"Model {self._inner.name!r} has no trainable float "
                "variables, so there is nothing to perturb (is it frozen?)."
            )
        if not perturbed:
            raise ValueError(
                f"`perturb={self._options.perturb!r}` selects none of the "
                f"{len(gradient_indices)} trainable float variables of model "
                f"{self._inner.name!r}; nothing would be perturbed."
            )
        geometry, views = None, ()
        if self._options.geometry in NUCLEAR_GEOMETRIES:
            matrices = weight_matrices(self._inner)
            perturbed = [i for i in perturbed if id(variables[i]) in matrices]
            if not perturbed:
                raise ValueError(
                    f"method {self._options.method!r} perturbs the kernels of "
                    "Dense and EinsumDense layers, and none of them is "
                    "trainable and selected by perturb="
                    f"{self._options.perturb!r} in model "
                    f"{self._inner.name!r}."
                )
            views = tuple(matrices[id(variables[i])] for i in perturbed)
        else:
            geometry = make_geometry(
                self._options, [variables[i] for i in perturbed]
            )
        clean = range(len(variables))
        if self._always_ascends():
            unread = set(gradient_indices) - set(perturbed)
            clean = [i for i in clean if i not in unread]
        return StepPlan(
            gradient_indices=tuple(gradient_indices),
            perturbed_indices=tuple(perturbed),
            geometry=geometry,
            views=views,
            keeps_gradient=self._options.reuse == "look",
            clean_indices=tuple(clean),
        )

    def _always_ascends(self) -> bool:
        """Whether every step takes an ascent (no branch without one)."""
        return self._options.reuse is None and self._options.start_step == 0

    def _create_state(self) -> None:
        """Creates the persistent state that the method needs and lacks."""
        plan = self._plan()
        variables = self.trainable_variables
        wanted = []
        if self._options.friendly:
            wanted += [
                (self._ema, "sam_ema", i) for i in plan.perturbed_indices
            ]
        if self._options.reuse == "look":
            wanted += [(self._g_v, "sam_g_v", i) for i in plan.gradient_indices]
        if plan.views:
            wanted += [(self._u, "sam_u", i) for i in plan.perturbed_indices]
            initial_u = dict(
                zip(
                    plan.perturbed_indices,
                    nuclear.initial_vectors([v.rows for v in plan.views]),
                )
            )
        missing = [
            (s, p, i) for s, p, i in wanted if variables[i].path not in s
        ]
        if not missing:
            return
        # A built layer locks its state; new trainable variables (unfrozen
        # after the build) still need theirs, created before `fit`.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            for store, prefix, i in missing:
                variable = variables[i]
                if store is self._u:
                    value = initial_u[i]
                    shape, initializer = value.shape, _constant(value)
                else:
                    shape, initializer = variable.shape, "zeros"
                store[variable.path] = self.add_weight(
                    shape=shape,
                    dtype="float32",
                    initializer=initializer,
                    trainable=False,
                    name=f"{prefix}_{variable.path.replace('/', '_')}",
                )
        finally:
            if locked:
                self._tracker.lock()

    def state_variables(self, plan: StepPlan | None = None) -> dict:
        """The persistent SAM state of a step, as Keras variables.

        Returns:
            `{"iterations": step counter, "ema": [F-SAM EMA per perturbed
            variable], "g_v": [LookSAM g_v per gradient variable], "u":
            [nuSAM fan-in vector per perturbed matrix]}` (empty lists where
            the method keeps no such state).
        """
        plan = plan or self._plan()
        variables = self.trainable_variables

        def lookup(store: dict, indices: tuple[int, ...]) -> list:
            try:
                return [store[variables[i].path] for i in indices]
            except KeyError as e:
                raise RuntimeError(
                    f"Trainable variable {e.args[0]!r} has no SAM state: it "
                    "became trainable after the last compile(). Call "
                    "compile() again after changing `trainable`, as Keras "
                    "requires."
                ) from None

        return {
            "iterations": self._iterations,
            "ema": lookup(self._ema, plan.perturbed_indices)
            if self._options.friendly
            else [],
            "g_v": lookup(self._g_v, plan.gradient_indices)
            if self._options.reuse == "look"
            else [],
            "u": lookup(self._u, plan.perturbed_indices) if plan.views else [],
        }

    def perturbation_state_size(self) -> int:
        """The number of values the method keeps between steps, beyond the
        base optimizer (the step counter aside).

        SAM, ASAM, Fisher, SAM-ON, LayerSAM, SAM-k: 0 (but each ascent holds a
        transient perturbation as large as the perturbed variables). F-SAM:
        one value per perturbed parameter (the EMA). LookSAM: one per
        trainable parameter (`g_v`). nuSAM: one per row of each weight matrix
        (the fan-in vectors `u`). Compositions add up.
        """
        state = self.state_variables()
        return sum(
            math.prod(v.shape) for v in state["ema"] + state["g_v"] + state["u"]
        )

    # ---- The step ---------------------------------------------------------

    def train_step(self, *args):
        return sam_backend.train_step(self, *args)

    def descent_gradients(
        self,
        plan: StepPlan,
        grads: list,
        trainable_values: list,
        state: dict,
        loss,
        second_pass: Callable[[list], tuple[Any, list]],
        loss_scale=None,
        replicas: Replicas = ONE_REPLICA,
    ) -> tuple[list, dict, Any, Any]:
        """The backend-neutral SAM step (DESIGN §3-§4), on values.

        Args:
            plan: the step plan.
            grads: pass-1 gradients, aligned with `trainable_variables`;
                `None` for variables without a gradient and for those
                outside `plan.clean_indices`.
            trainable_values: the current values of `trainable_variables`.
            state: the values of `state_variables(plan)`.
            loss: the pass-1 loss (without loss scaling).
            second_pass: `(values, rank_one) -> (loss, grads, restored)`:
                the loss and gradients with every side effect of the forward
                pass discarded, at `values`, or, when `rank_one` (a `RankOne`)
                is given, at `values` plus that perturbation, which the
                backend adds in place and subtracts afterwards; `restored`
                is then the weights after the subtraction (for functional
                backends; in-place backends return `values`).
            loss_scale: the `LossScaleOptimizer`'s current scale, by which
                `grads` and pass 2's gradients are multiplied, or `None`.
                The method's math and its state are in unscaled units; the
                gradients returned are scaled, for the optimizer to unscale.
            replicas: the replicas this step runs on (`tf.distribute`); then
                `grads` and pass 2's gradients are this replica's shares and
                so are the gradients returned. With `ascent="global"` the
                ascent follows the all-reduced gradient; with
                `"per_replica"`, this replica's own. The state always
                follows all-reduced values, identical on every replica.

        Returns:
            `(gradients for the base optimizer, new state values, sharpness,
            1.0 if an ascent was taken else 0.0, the trainable values to
            update: `None` unless the perturbation was rank one, 1.0 if the
            state was left as it was (a non-finite gradient) else 0.0)`.
        """
        o = self._options
        gi, pi = plan.gradient_indices, plan.perturbed_indices
        position = {i: j for j, i in enumerate(gi)}
        shares = _unscaled(_or_zeros(grads, trainable_values, gi), loss_scale)
        shares_p = [shares[position[i]] for i in pi]
        per_replica = o.ascent == "per_replica" and replicas.count > 1
        # `g`, the global-batch gradient, drives the state (and the ascent,
        # unless it is per replica), so the replicas' states never differ;
        # only LookSAM reads it beyond the perturbed variables.
        g = g_p = None
        if o.reuse == "look":
            g = replicas.sum(shares)
            g_p = [g[position[i]] for i in pi]
        elif not per_replica or o.friendly or plan.views:
            g_p = replicas.sum(shares_p)
        own_p = replicas.own(shares_p) if per_replica else g_p
        g_finite = replicas.all(all_finite(shares))
        t = state["iterations"] - o.start_step
        active = ops.greater_equal(t, 0)
        ascent = schedule.takes_ascent(t, o.reuse, o.k)
        new_state = {
            "iterations": state["iterations"] + 1,
            "ema": [],
            "g_v": [],
            "u": [],
        }

        def direction_of(gradients):
            if not o.friendly:
                return gradients
            return friendly_lib.direction(gradients, new_state["ema"], o.sigma)

        if o.friendly:
            ema = friendly_lib.ema_update(state["ema"], g_p, o.ema_decay)
            new_state["ema"] = [
                ops.where(active, new, old)
                for new, old in zip(ema, state["ema"])
            ]
        direction = direction_of(own_p)

        # Which variables pass 2 gave a gradient (read for those that pass
        # 1 did not differentiate).
        differentiated = {}

        def with_ascent():
            rho = schedule.rho_at(o.rho, ops.maximum(t, 0))
            u = state["u"]
            if plan.views:
                rank_one, new_u = self._rank_one(plan, direction, u, rho)
                if per_replica:  # the state's u follows the global gradient
                    _, new_u = self._rank_one(plan, direction_of(g_p), u, rho)
                u = new_u
                values = trainable_values
            else:
                rank_one = None
                weights = to_float32([trainable_values[i] for i in pi])
                eps = perturbation(
                    plan.geometry, direction, own_p, weights, rho
                )
                values = list(trainable_values)
                for i, e in zip(pi, eps):
                    values[i] = values[i] + ops.cast(e, values[i].dtype)
                del eps  # eager backends: free it before pass 2
            loss_2, grads_2, restored = second_pass(values, rank_one)
            differentiated.update((i, grads_2[i] is not None) for i in gi)
            g_s = _or_zeros(grads_2, trainable_values, gi)
            sharpness = ops.cast(loss_2, "float32") - ops.cast(loss, "float32")
            finite = all_finite(g_s)
            g_v = state["g_v"]
            if o.reuse == "look":
                # This replica's share of g_v (the projection is linear).
                g_v = schedule.look_stored(
                    g,
                    schedule.look_projection(g, _unscaled(g_s, loss_scale)),
                    o.reuse_scale,
                )
            outputs = (g_s, sharpness, g_v, u, finite)
            if plan.views:
                return (*outputs, restored)
            return outputs

        def without_ascent():
            final = _or_zeros(grads, trainable_values, gi)
            if o.reuse == "look":
                # alpha = 0 before start_step: g + 0 * g_v == g exactly.
                alpha = ops.where(active, o.alpha, 0.0)
                reused = schedule.look_reuse(
                    g, state["g_v"], alpha, o.reuse_scale
                )
                if loss_scale is not None:
                    reused = [r * loss_scale for r in reused]
                reused = replicas.share(reused)
                final = [ops.cast(r, f.dtype) for r, f in zip(reused, final)]
            outputs = (
                final,
                ops.zeros((), "float32"),
                state["g_v"],
                state["u"],
                g_finite,
            )
            if plan.views:
                return (*outputs, list(trainable_values))
            return outputs

        if self._always_ascends():
            # Every step is an ascent: straight-line code lets the compiler
            # free pass-1 buffers early (a conditional keeps the operands of
            # both branches alive).
            outputs = with_ascent()
        else:
            outputs = ops.cond(ascent, with_ascent, without_ascent)
        final_g, sharpness, g_v, u, update_finite = outputs[:5]
        trainable_after = list(outputs[5]) if plan.views else None
        # Replicas synchronise outside the conditional: MirroredStrategy
        # cannot all-reduce inside one.
        update_finite = replicas.all(update_finite)
        if o.reuse == "look" and replicas.count > 1:
            g_v = [
                ops.where(ascent, new, old)
                for new, old in zip(replicas.sum(g_v), state["g_v"])
            ]
        new_state["g_v"] = list(g_v)
        new_state["u"] = list(u)
        # A non-finite gradient (an overflow under loss scaling) never
        # reaches the state: such a step leaves all of it, the counter
        # included, as it was.
        commit = ops.logical_and(g_finite, update_finite)
        new_state = keras.tree.map_structure(
            lambda new, old: ops.where(commit, new, old), new_state, state
        )
        final = list(grads)
        clean = set(plan.clean_indices)
        for i, f in zip(gi, final_g):
            if grads[i] is not None if i in clean else differentiated[i]:
                final[i] = f
        # A skipped step's sharpness (NaN, for a NaN loss) is not averaged.
        return (
            final,
            new_state,
            ops.where(commit, sharpness, 0.0),
            ops.cast(ops.logical_and(ascent, commit), "float32"),
            trainable_after,
            ops.cast(ops.logical_not(commit), "float32"),
        )

    def loss_scale(self):
        """The factor by which `optimizer.scale_loss` multiplies the loss
        (float32): a `LossScaleOptimizer`'s current scale, or any optimizer's
        `loss_scale_factor`; `None` when the loss is not scaled."""
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.cast(optimizer.dynamic_scale, "float32")
        if optimizer.loss_scale_factor is not None:
            return ops.cast(optimizer.loss_scale_factor, "float32")
        return None

    def _rank_one(self, plan: StepPlan, direction, u, rho):
        """nuSAM's perturbation as factors, and the new `u` vectors."""
        o = self._options
        matrices = [view.to_matrix(d) for view, d in zip(plan.views, direction)]
        u, v, scales = nuclear.rank_one(
            matrices,
            u,
            rho,
            o.power_iterations,
            normalized=o.geometry == "nuclear_norm",
        )
        return RankOne(plan.perturbed_indices, plan.views, u, v, scales), u

    def perturbed_loss(
        self,
        trainable_values,
        non_trainable_values,
        metrics_values,
        x,
        y,
        sample_weight,
    ):
        """Pass 2: the loss at the given values, side effects discarded.

        Runs the model functionally (`stateless_call`) with
        `non_trainable_values` (those from before pass 1: same dropout mask,
        BatchNorm in training mode on the same batch statistics), includes
        regularization losses at the perturbed weights, and drops every
        update to non-trainable and metric variables.
        """
        kwargs = {"training": True} if self._call_has_training_arg else {}
        # `stateless_call` skips `__call__`'s name scope; without it the
        # wrapped model would open a root TF scope, which rejects names
        # starting with "_".
        with keras.name_scope(self.name):
            y_pred, _, losses = self.stateless_call(
                trainable_values,
                non_trainable_values,
                x,
                return_losses=True,
                **kwargs,
            )
        if losses:
            self._losses_override.clear()
            self._losses_override = losses
        try:
            with keras.StatelessScope(
                state_mapping=list(zip(self.metrics_variables, metrics_values))
            ):
                loss = self._compute_loss(
                    x=x,
                    y=y,
                    y_pred=y_pred,
                    sample_weight=sample_weight,
                    training=True,
                )
        finally:
            if losses:
                self._losses_override.clear()
        return loss

    # ---- Logs -------------------------------------------------------------

    @contextlib.contextmanager
    def logging_sharpness(self):
        """Within it, `get_metrics_result` reports `sharpness` and
        `sam_skipped` (train logs)."""
        self._log_sharpness = True
        try:
            yield
        finally:
            self._log_sharpness = False

    def get_metrics_result(self):
        logs = super().get_metrics_result()
        if not self._log_sharpness:
            logs.pop("sharpness", None)
            logs.pop("sam_skipped", None)
        return logs
