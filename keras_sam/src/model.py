"""`SAMModel`: wraps any Keras model to train it with SAM or a variant."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_sam.src import checkpoints, guard
from keras_sam.src.backend import BackendSAMTrainer, check_supported
from keras_sam.src.late_phase import NOT_SET, LatePhase, check_set
from keras_sam.src.methods import masks, nuclear
from keras_sam.src.options import (
    OPTION_NAMES,
    UNSET,
    SAMOptions,
    check_option_names,
    resolve_options,
)
from keras_sam.src.plan import StepPlan, make_plan
from keras_sam.src.serialization import deserialize_option, serialize_option
from keras_sam.src.state import SAMState, StateVariables, new_variable

# What `keras.Model` takes besides the options.
_KERAS_KEYWORDS = frozenset({"name", "dtype", "trainable", "autocast"})


class _StepCount(keras.metrics.Sum):
    """A count of steps, for the logs. `Sum.result()` on torch is the
    variable's own storage, which `evaluate()` resets in place while `fit`
    still holds the epoch's logs: the result here is a copy."""

    def result(self):
        return ops.copy(self.total)


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(BackendSAMTrainer, keras.Model):
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
    took an ascent. `msam` is the exception: its one pass per step runs at
    the look-ahead `w + eps`, whose loss and metrics it logs, and it never
    measures `sharpness` (0); the weights between steps, which `evaluate`,
    callbacks and `save` see, are always `w`.

    Every SAM variant is a point of five axes (mask, direction, geometry,
    schedule, descent rule); `method` names a preset and the options
    override it:

    | method | geometry | direction | reuse | descent | perturb | rho |
    | --- | --- | --- | --- | --- | --- | --- |
    | `"sam"` | l2 | gradient | none | sam | all | 0.05 |
    | `"samon"` | l2 | gradient | none | sam | norm | 1.0 |
    | `"asam"` | adaptive | gradient | none | sam | all | 0.2 |
    | `"fisher"` | fisher | gradient | none | sam | all | 0.1 |
    | `"fsam"` | l2 | friendly | none | sam | all | 0.05 |
    | `"fasam"` | adaptive | friendly | none | sam | all | 0.2 |
    | `"layersam"` | layer | gradient | none | sam | all | 0.2 |
    | `"looksam"` | l2 | gradient | look | sam | all | 0.05 |
    | `"looklayersam"` | layer | gradient | look | sam | all | 0.1 |
    | `"samk"` | l2 | gradient | every_k | sam | all | 0.2 |
    | `"nusam"` | nuclear | gradient | none | sam | matrices | 0.1 |
    | `"nusam_norm"` | nuclear_norm | gradient | none | sam | matrices | 0.2 |
    | `"gsam"` | l2 | gradient | none | gsam | all | 0.05 |
    | `"wsam"` | l2 | gradient | none | wsam | all | 0.05 |
    | `"msam"` | l2 | momentum | none | sam | all | 0.3 |

    `samk` ascends on every `k=2`-th step; `looksam` and `looklayersam` on
    every `k=5`-th, reusing `g_v` with `alpha=0.7` between (`looklayersam`
    with `reuse_scale="relative"`).

    AE-SAM's adaptive schedule is an option of any method:
    `policy="adaptive"` (AE-SAM with `reuse=None`, AE-LookSAM with
    `method="looksam"`); so is RST's randomized one, `policy="random"`.

    The nuclear geometries perturb only weight matrices (the kernels of
    `Dense` and `EinsumDense` layers, attention projections included) with
    one rank-1 perturbation each.

    Args:
        model: the `keras.Model` or `keras.layers.Layer` to train.
        method: the preset, one of the table above. Defaults to `"sam"`.
        rho: the perturbation radius: a float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            of the SAM step `t` (0 at `start_step`; passed as a float32
            scalar tensor). Defaults to the preset's radius (the table
            above; its sources in docs/hyperparameters.md).
        perturb: which trainable variables are perturbed: `"all"`, `"norm"`
            (those of normalization layers, SAM-ON), `"no_norm"`, or a
            callable `variable -> bool`. Defaults to the preset's mask.
        start_step: steps before this one are plain base-optimizer steps.
            Defaults to `0`.
        late_phase: late-phase SAM: a float in (0, 1], the last fraction
            of the first `fit`'s steps (its epochs times the steps per
            epoch) that take SAM steps; the steps before are plain, and the
            first SAM step, set when that `fit` begins, is kept by a
            resumed run and by later `fit` calls. Excludes `start_step`.
            Defaults to `None` (`start_step` decides).
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
            `"global"` (`rho * ||w_i|| / ||w||`: a total radius `rho`,
            shared in proportion to the variables' norms), `"layer"`
            (`rho * ||w_i||`: a fraction `rho` of each variable's norm) or
            `"eq7"` (`rho * ||w_i|| / ||g||`, the paper's eq. 7, unbounded as
            the gradient shrinks); layer geometry only. Defaults to
            `"global"` (measured in docs/methods/layersam.md).
        friendly: F-SAM: ascend along `g - sigma * m`, `m` an EMA of the
            clean gradients. Defaults to the preset's value.
        direction: what the ascent follows: `"gradient"` (this step's clean
            gradient, from pass 1) or `"momentum"` (MSAM: the step's one
            pass runs at the look-ahead `w - rho m / ||m||`, `m` an EMA of
            the gradients, and its gradient is the update; l2, adaptive and
            layer geometries, without `friendly`, `reuse`, an adaptive
            `policy`, a descent rule or micro-batches). Defaults to the
            preset's value.
        ema_decay: the decay of the EMA `m` of the gradients, in [0, 1):
            F-SAM's `lambda`, MSAM's momentum `mu`. Defaults to `0.9`.
        sigma: F-SAM's `sigma`, >= 0. Defaults to `1.0`.
        reuse: `"look"` (LookSAM: reuse the orthogonal component `g_v` of the
            SAM gradient between ascents) or `"every_k"` (SAM-k: plain steps
            between ascents). Defaults to the preset's value.
        k: the period of the ascents with `reuse`, an int >= 1. Defaults
            to `5` (`2` for `samk`).
        alpha: LookSAM's reuse weight, in [0, 1]. Defaults to `0.7`.
        reuse_scale: how LookSAM's reuse steps scale the stored `g_v` in
            `g + alpha * c * g_v`: `"stored"` (`c = 1`: `g_v` as the last
            ascent measured it, a term that scales with `rho`),
            `"relative"` (`c = ||g|| / ||g_a||`, `g_a` the clean gradient of
            that ascent) or `"gradient"` (`c = ||g|| / ||g_v||`, the
            paper's Alg. 1: a term of norm `alpha * ||g||` whatever `rho`,
            which collapses small-batch training; docs/methods/looksam.md).
            Defaults to `"stored"` (`"relative"` for `looklayersam`).
        policy: when to ascend: `"periodic"` (every step, or every `k`-th
            with `reuse`), `"adaptive"` (AE-SAM: on the steps whose squared
            clean-gradient norm `||g||^2` is at least `mu + c_t * sigma`, its
            running mean plus `c_t` running standard deviations) or
            `"random"` (RST: each step with probability
            `ascent_probability`, drawn reproducibly from `policy_seed`); the
            other steps are plain, or LookSAM's reuse with `reuse="look"`.
            Defaults to `"periodic"`.
        policy_decay: AE-SAM's `delta`, the decay of the running mean and
            variance of `||g||^2`, in [0, 1). Defaults to `0.9`.
        policy_threshold: AE-SAM's `c_t`: a finite float, a
            `LearningRateSchedule` or a callable of the SAM step `t` (the
            paper's linear schedule from 1 to -1 over `T` steps is
            `keras.optimizers.schedules.PolynomialDecay(1.0, T, -1.0)`).
            Defaults to `0.0`.
        ascent_probability: RST's `p_t`, the probability that step `t`
            ascends: a float in [0, 1], a `LearningRateSchedule` or a
            callable of the SAM step `t` (a step where it gives a value
            outside [0, 1] is skipped). Defaults to `0.5`.
        policy_seed: RST's seed, an int >= 0: step `t` ascends when
            `u_t < p_t`, `u_t` a hash of the seed and `t` in integer
            arithmetic, the same draws on every backend and after a resume.
            Defaults to `0`.
        power_iterations: nuSAM's warm-started power iterations per ascent,
            an int >= 1 (nuclear geometries). Defaults to `1`.
        descent: the update of an ascent step from the clean gradient `g`
            and the gradient `g_s` at `w + eps`: `"sam"` (`g_s`), `"gsam"`
            (GSAM: `g_s - gsam_alpha * g_perp`, `g_perp` the component of `g`
            orthogonal to `g_s`) or `"wsam"` (WSAM: `g + gamma / (1 -
            gamma) * (g_s - g)`). Defaults to the preset's value.
        gsam_alpha: GSAM's `alpha`, a float >= 0 (`0`: SAM). Defaults to
            `0.6`.
        gamma: WSAM's `gamma`, in [0, 1): the sharpness term weighs `gamma
            / (1 - gamma)` (`0.5`: SAM's update). Defaults to `0.97`.
        decoupled: WSAM: the base optimizer receives `g` and the sharpness
            term `gamma / (1 - gamma) * (g_s - g)` is subtracted, times the
            optimizer's learning rate, after its step (the paper's Alg. 1);
            `False` gives the optimizer the weighted gradient instead.
            Defaults to `True`.
        ascent: `"global"` (the ascent uses the global-batch gradient) or
            `"per_replica"` (each replica perturbs with its own gradient).
            Identical on one device. Defaults to `"global"`.
        batch_splits: m-sharpness, an int >= 1: the batch (each replica's,
            with `ascent="per_replica"`) splits into this many equal
            micro-batches; each takes its own clean gradient, its own ascent
            and its own pass 2, and the base optimizer receives the mean of
            their SAM gradients (docs/semantics.md, "Micro-batches"). The
            batch size must be divisible by it. Defaults to `1`.
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
        Vision Transformer in Minutes", 2022. Zhuang et al., "Surrogate Gap
        Minimization Improves Sharpness-Aware Training" (GSAM), ICLR 2022.
        Yue et al., "Sharpness-Aware Minimization Revisited: Weighted
        Sharpness as a Regularization Term" (WSAM), KDD 2023. Jiang et al.,
        "An Adaptive Policy to Employ Sharpness-Aware Minimization"
        (AE-SAM), ICLR 2023. Becker et al., "Momentum-SAM: Sharpness Aware
        Minimization without Computational Overhead", 2024. Zhao et al.,
        "Randomized Sharpness-Aware Training for Boosting Computational
        Efficiency in Deep Learning" (RST), 2022. Zhou et al.,
        "Sharpness-Aware Minimization Efficiently Selects Flatter Minima
        Late in Training", ICLR 2025.
    """

    def __init__(
        self,
        model: keras.layers.Layer,
        method: str = "sam",
        rho: float | Callable = UNSET,
        *,
        perturb: str | Callable = UNSET,
        start_step: int = UNSET,
        late_phase: float | None = UNSET,
        adaptive: str = UNSET,
        norm: str = UNSET,
        eta: float = UNSET,
        normalize_bias: bool = UNSET,
        layer_scale: str = UNSET,
        friendly: bool = UNSET,
        direction: str = UNSET,
        ema_decay: float = UNSET,
        sigma: float = UNSET,
        reuse: str | None = UNSET,
        k: int = UNSET,
        alpha: float = UNSET,
        reuse_scale: str = UNSET,
        policy: str = UNSET,
        policy_decay: float = UNSET,
        policy_threshold: float | Callable = UNSET,
        ascent_probability: float | Callable = UNSET,
        policy_seed: int = UNSET,
        power_iterations: int = UNSET,
        descent: str = UNSET,
        gsam_alpha: float = UNSET,
        gamma: float = UNSET,
        decoupled: bool = UNSET,
        ascent: str = UNSET,
        batch_splits: int = UNSET,
        **kwargs: Any,
    ):
        _check_model(model)
        arguments = locals()
        options = resolve_options(
            method, **{name: arguments[name] for name in OPTION_NAMES}
        )
        _check_mask(options, model)
        check_option_names(set(kwargs) - _KERAS_KEYWORDS)
        check_supported()
        super().__init__(**kwargs)
        self._on_create()
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
        self._start = None
        if options.late_phase is not None:
            self._start = self.add_weight(
                shape=(),
                dtype="int32",
                initializer=keras.initializers.Constant(NOT_SET),
                trainable=False,
                name="sam_start",
            )
        # Every state variable ever created, by name (kept across compiles).
        self._state_store: dict[str, keras.Variable] = {}
        self._plan: StepPlan | None = None
        self._state: StateVariables | None = None
        if model.built:
            self._make_plan()
            self.built = True

    @property
    def inner(self) -> keras.layers.Layer:
        """The wrapped model, for inference and export."""
        return self._inner

    @property
    def options(self) -> SAMOptions:
        """The resolved options (preset applied, defaults filled in)."""
        return self._options

    @property
    def sam_state(self) -> SAMState:
        """The method's persistent state, as Keras variables: the step
        counter, F-SAM's EMA, LookSAM's `g_v`, nuSAM's `u` (see
        `SAMState`)."""
        self._check_plan()
        return self._state.variables

    @property
    def perturbed_variables(self) -> list:
        """The trainable variables the method perturbs."""
        self._check_plan()
        variables = self.trainable_variables
        return [variables[i] for i in self._plan.perturbed_indices]

    def perturbation_state_size(self) -> int:
        """The number of values the method keeps between steps, beyond the
        base optimizer (the step counter aside).

        SAM, ASAM, Fisher, SAM-ON, LayerSAM, SAM-k, GSAM, WSAM: 0 (but each
        ascent holds a transient perturbation as large as the perturbed
        variables). F-SAM: one value per perturbed parameter (the EMA).
        LookSAM: one per trainable parameter (`g_v`). nuSAM: one per row of
        each weight matrix (the fan-in vectors `u`). AE-SAM's policy: 2 (the
        mean and variance of `||g||^2`). Compositions add up.
        """
        state = self.sam_state
        return sum(
            math.prod(v.shape)
            for v in state.ema + state.g_v + state.u + state.norm_stats
        )

    def call(self, inputs, training=None):
        return self._inner(inputs, training=training)

    def get_config(self) -> dict:
        """The wrapped model's config and every option that applies, as
        resolved (so a loaded model keeps them if a preset's defaults
        change).

        Raises:
            ValueError: `rho`, `perturb` or `policy_threshold` is a callable
                that Keras cannot rebuild (see `SAMModel` saving in the
                docs).
        """
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model": keras.saving.serialize_keras_object(self._inner),
            "method": self._options.method,
        }
        for name, value in self._options.given().items():
            config[name] = serialize_option(name, value)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> SAMModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        for name in OPTION_NAMES:  # a callable was saved as a Keras object
            if name in config:
                config[name] = deserialize_option(config[name])
        return cls(model, **config)

    def build(self, input_shape=None):
        if not self._inner.built:
            # Build the wrapped model as Keras builds a layer on first call.
            self._inner(
                keras.tree.map_shape_structure(keras.KerasTensor, input_shape)
            )
        self._make_plan()

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        _check_decoupled(self._options, self.optimizer)
        if self.built:
            # Keras fixes trainability at compile (unfreezing a backbone
            # needs one): the plan, and the state of new variables, follow.
            self._make_plan()

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        *args,
        **kwargs,
    ):
        """Trains as `keras.Model.fit` does, guarded.

        A layer frozen or unfrozen since `compile()` raises before the
        first step, on every backend. If `fit` raises (a bad batch, a
        failing callable `rho`, an interrupt), every variable keeps a value
        (the weights, the optimizer's, the metrics' and the SAM state), so
        the model can be saved, evaluated or trained again once the cause is
        fixed: the values of the last completed step, or of the epoch's
        start where Keras' JAX trainer had not yet written a step back.

        In a multi-process run, each `keras.callbacks.BackupAndRestore`
        backs up to a subdirectory of its `backup_dir` per process (JAX's
        `process_0`, `process_1`, ...; TensorFlow's `worker_0`, ...), as
        one HDF5 file cannot be written by several processes, and only
        once the steps dispatched before the backup have run
        (`keras_sam/src/checkpoints.py`).
        """
        if self._plan is not None:
            self._check_plan()
        keeper = guard.ValuesKept()
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = callbacks.callbacks
        callbacks = [*checkpoints.per_process(callbacks or [], self)]
        if self._start is not None:
            callbacks.append(
                LatePhase(
                    self._options.late_phase, self._start, self._iterations
                )
            )
        callbacks.append(keeper)
        try:
            return super().fit(
                x, y, batch_size, epochs, verbose, callbacks, *args, **kwargs
            )
        except BaseException:
            keeper.restore()
            raise

    def train_on_batch(self, *args, **kwargs):
        """As `keras.Model.train_on_batch`; with `late_phase`, once a `fit`
        has set the first SAM step (the run's length is fit's)."""
        check_set(self._options.late_phase, self._start)
        return super().train_on_batch(*args, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        # Keras skips this for models that override `compile()`; ours only
        # makes the plan, so compile as `Trainer.compile_from_config` does.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # ---- The plan and the state --------------------------------------------

    def _make_plan(self) -> None:
        """Decides which variables take part, and creates the state they
        need and lack (before `fit`, as the JAX trainer requires)."""
        variables = self.trainable_variables
        self._plan = make_plan(self._options, self._inner, variables)
        self._state = StateVariables(self._state_variables(variables))

    def _state_variables(self, variables: list) -> SAMState:
        plan, o = self._plan, self._options
        initial_u = nuclear.initial_vectors(
            [m.view.rows for m in plan.matrices]
        )

        def variable(prefix: str, i: int, value=None) -> keras.Variable:
            name = f"{prefix}_{variables[i].path.replace('/', '_')}"
            if name not in self._state_store:
                shape = variables[i].shape if value is None else value.shape
                self._state_store[name] = new_variable(self, name, shape, value)
            return self._state_store[name]

        def scalar(name: str) -> keras.Variable:
            if name not in self._state_store:
                self._state_store[name] = new_variable(self, name, ())
            return self._state_store[name]

        perturbed, gradient = plan.perturbed_indices, plan.gradient_indices
        return SAMState(
            iterations=self._iterations,
            ema=[variable("sam_ema", i) for i in perturbed]
            if o.friendly or o.direction == "momentum"
            else [],
            g_v=[variable("sam_g_v", i) for i in gradient]
            if o.reuse == "look"
            else [],
            u=[
                variable("sam_u", i, value)
                for i, value in zip(perturbed, initial_u)
            ],
            norm_stats=[scalar("sam_norm_mean"), scalar("sam_norm_variance")]
            if o.policy == "adaptive"
            else [],
            start=[] if self._start is None else [self._start],
        )

    def _check_plan(self) -> None:
        """Raises if the trainable variables changed since the plan."""
        if self._plan is None:
            raise ValueError(
                f"SAMModel {self.name!r} is not built: build it (or call it "
                "on data, or fit it) first."
            )
        current = tuple(id(v) for v in self.trainable_variables)
        if current != self._plan.variable_ids:
            raise RuntimeError(
                "The trainable variables of SAMModel "
                f"{self.name!r} changed since the last compile() (a layer "
                "was frozen or unfrozen): call compile() again, as Keras "
                "requires after changing `trainable`, so that SAM's plan "
                "and state follow."
            )

    # ---- Logs ---------------------------------------------------------------

    @contextlib.contextmanager
    def _logging_sharpness(self):
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


def _check_model(model) -> None:
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


def _check_decoupled(options: SAMOptions, optimizer) -> None:
    """WSAM's decoupled term is applied after every step of the optimizer;
    with gradient accumulation the optimizer steps once every n micro-batches
    and the micro-batches must all see the same weights."""
    if not options.decoupled or optimizer is None:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    steps = [
        getattr(o, "gradient_accumulation_steps", None)
        for o in (optimizer, inner)
    ]
    if any(steps):
        raise ValueError(
            "WSAM's decoupled form (`decoupled=True`) subtracts its "
            "sharpness term after each step of the base optimizer, which "
            "gradient accumulation (gradient_accumulation_steps="
            f"{max(s or 0 for s in steps)}) defers to every n-th batch. Use "
            "decoupled=False (the coupled form: the optimizer receives g + "
            "gamma / (1 - gamma) (g_s - g)), or no gradient accumulation."
        )


def _check_mask(options: SAMOptions, model) -> None:
    if options.perturb == "norm" and not masks.normalization_layers(model):
        raise ValueError(
            "`perturb='norm'` (SAM-ON) perturbs only the variables of "
            "normalization layers (BatchNormalization, LayerNormalization, "
            "GroupNormalization, RMSNormalization and subclasses), and "
            f"model {model.name!r} has none. Use perturb='all', "
            "'no_norm' or a callable. Received perturb='norm'."
        )
