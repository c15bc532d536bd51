"""Golden trajectories: every preset and several compositions, step by step,
against the independent NumPy reference (tests/support/reference.py)."""

import keras
import numpy as np
import pytest
from support.golden import CASES
from support.helpers import (
    COVERING_PRESETS,
    LR,
    Batches,
    assert_weights_close,
    compile_sgd,
    reference_mlp,
)
from support.reference import (
    Config,
    Reference,
    init_params,
    make_batches,
    step_per_replica,
)

from keras_sam import PRESETS, SAMModel

# case -> (compiled SAMModel, the initial values of all its variables): the
# two tests of a case share one model and its compiled step, reset to the
# start (weights, SAM state, optimizer) before each run.
_MODELS = {}


def _setup(case):
    options, config = CASES[case]
    params = init_params()
    x, y = make_batches()
    x = x.astype("float32")
    if case not in _MODELS:
        sam = SAMModel(reference_mlp(params), **options)
        compile_sgd(sam)
        sam.optimizer.build(sam.trainable_variables)
        variables = sam.variables + sam.optimizer.variables
        _MODELS[case] = sam, [keras.ops.convert_to_numpy(v) for v in variables]
    sam, initial = _MODELS[case]
    for variable, value in zip(
        sam.variables + sam.optimizer.variables, initial
    ):
        variable.assign(value)
    sam.reset_metrics()
    return sam, sam.inner, Reference(config, params, LR), x, y


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_step_matches_reference(case):
    sam, model, ref, x, y = _setup(case)
    for step in range(len(x)):
        sam.reset_metrics()
        logs = sam.train_on_batch(x[step], y[step], return_dict=True)
        ref.step(x[step], y[step])
        assert_weights_close(model, ref.params(), msg=f"{case} step {step}:")
        # The logged loss is L(w); sharpness = L(w + eps) - L(w) is first
        # order in eps, so it pins the perturbation itself, not only its
        # (second-order) effect on the update.
        np.testing.assert_allclose(logs["loss"], ref.last_loss, rtol=1e-5)
        expected = ref.last_sharpness
        np.testing.assert_allclose(
            logs["sharpness"],
            0.0 if expected is None else expected,
            rtol=1e-4,
            atol=2e-6,
            err_msg=f"{case} step {step}: sharpness",
        )


# `fit`'s loop is the same for every case; it runs every preset, and the
# compositions whose state or schedule no preset has (AE-SAM's statistics,
# RST's draw, a radius schedule, a delayed start).
FIT_CASES = (
    *PRESETS,
    "aelooksam",
    "rst_look_schedule_seed",
    "rho_schedule",
    "look_fsam_delayed",
)


@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_matches_reference(case):
    """The same trajectory through `fit` (JAX purges variables during fit,
    so the persistent state must live in the trainer's state)."""
    sam, model, ref, x, y = _setup(case)
    sam.fit(
        x.reshape(-1, x.shape[-1]),
        y.reshape(-1),
        batch_size=x.shape[1],
        shuffle=False,
        epochs=1,
        verbose=0,
    )
    for step in range(len(x)):
        ref.step(x[step], y[step])
    assert_weights_close(model, ref.params(), msg=f"{case} after fit:")
    assert int(keras.ops.convert_to_numpy(sam._iterations.value)) == len(x)


@pytest.mark.parametrize(
    "case, splits",
    [
        ("sam", 2),
        ("sam", 4),
        ("fsam", 4),
        ("looksam", 2),
        ("nusam", 4),
        ("gsam", 2),
        ("wsam", 4),
        ("aelooksam", 2),
    ],
)
def test_micro_batches_match_reference(case, splits):
    """m-sharpness (`batch_splits`): each micro-batch of a batch of 16 takes
    its own ascent and pass 2 (the reference's per-shard step); F-SAM's EMA,
    LookSAM's g_v, nuSAM's u and AE-SAM's statistics follow the mean
    gradient; GSAM decomposes each micro-batch's own."""
    options, config = CASES[case]
    sam = SAMModel(reference_mlp(init_params()), **options, batch_splits=splits)
    compile_sgd(sam)
    x, y = make_batches()
    sam.fit(
        x.reshape(-1, x.shape[-1]).astype("float32"),
        y.reshape(-1),
        batch_size=x.shape[1],
        shuffle=False,
        verbose=0,
    )
    ref = Reference(config, init_params(), LR)
    whole = Reference(config, init_params(), LR)
    for step in range(len(x)):
        step_per_replica(ref, x[step], y[step], splits)
        whole.step(x[step], y[step])
    assert_weights_close(sam.inner, ref.params(), msg=f"{case}/{splits}:")
    # Not the whole batch's trajectory: the test tells the two apart.
    assert np.max(np.abs(ref.theta - whole.theta)) > 1e-4


@pytest.mark.parametrize("case, splits", [("nusam", 1), ("nusam", 4)])
def test_batches_of_unknown_size_match_reference(case, splits):
    """A dataset's batches have no static size in TensorFlow's trace:
    nuSAM's factorised layers and the micro-batches take it at run time."""
    options, config = CASES[case]
    sam = SAMModel(reference_mlp(init_params()), **options, batch_splits=splits)
    compile_sgd(sam)
    x, y = make_batches()
    sam.fit(Batches(x.astype("float32"), y), shuffle=False, verbose=0)
    ref = Reference(config, init_params(), LR)
    for step in range(len(x)):
        step_per_replica(ref, x[step], y[step], splits)
    assert_weights_close(sam.inner, ref.params(), msg=f"{case}/{splits}:")


@pytest.mark.parametrize("dataset", [False, True])
def test_a_batch_that_does_not_split_equally_is_a_clear_error(dataset):
    """With arrays the trace knows the batch size; with a dataset on
    TensorFlow the step checks it at run time and prints it as `N`."""
    sam = SAMModel(reference_mlp(init_params()), batch_splits=4)
    compile_sgd(sam)
    x, y = make_batches()
    x, y = x.reshape(-1, x.shape[-1]).astype("float32")[:6], y.reshape(-1)[:6]
    size = "N" if dataset and keras.backend.backend() == "tensorflow" else 6
    message = (
        f"batch_splits=4 splits each batch into 4 equal micro-batches, and "
        f"this batch has {size} examples. Use a batch size divisible by 4"
    )
    with pytest.raises(Exception, match=message) as error:
        if dataset:
            sam.fit(Batches([x], [y]), verbose=0)
        else:
            sam.fit(x, y, batch_size=6, verbose=0)
    if size == "N":
        assert "[N =] [6]" in str(error.value)


def test_cases_cover_every_preset():
    covered = {options["method"] for options, _ in CASES.values()}
    assert covered == set(PRESETS)
    assert len(CASES) >= len(PRESETS) + 2
    assert set(FIT_CASES) <= set(CASES)


def _settings(name: str) -> set:
    preset = PRESETS[name]
    values = {(k, v) for k, v in preset.values.items() if k != "rho"}
    return values | {("geometry", preset.geometry)}


def test_covering_presets_set_every_option_a_preset_sets():
    """The presets of the tests that run a shared mechanism through a few
    presets only (`COVERING_PRESETS`) set every geometry and option value
    that any preset sets: a new preset with a new option joins them."""
    covered = set().union(*(_settings(name) for name in COVERING_PRESETS))
    for name in PRESETS:
        assert _settings(name) <= covered, name


@pytest.mark.parametrize("decoupled", [True, False])
def test_wsam_with_adam_and_a_schedule_matches_reference(decoupled):
    """With an adaptive optimizer WSAM's two forms differ (with SGD they
    coincide): decoupled, Adam takes `g` and the sharpness term is
    subtracted times the scheduled learning rate after its step (WSAM's
    Alg. 1); coupled, Adam takes the weighted gradient."""
    params = init_params()
    x, y = make_batches()
    x = x.astype("float32")
    model = reference_mlp(params)
    sam = SAMModel(model, method="wsam", rho=0.1, decoupled=decoupled)
    sam.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(0.01, 2, 0.5)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def reference(decoupled):
        config = Config(
            descent="wsam", gamma=0.97, decoupled=decoupled, rho=0.1
        )
        return Reference(
            config, params, lambda n: 0.01 * 0.5 ** (n / 2), optimizer="adam"
        )

    ref, other = reference(decoupled), reference(not decoupled)
    for step in range(len(x)):
        sam.train_on_batch(x[step], y[step])
        ref.step(x[step], y[step])
        other.step(x[step], y[step])
        assert_weights_close(model, ref.params(), msg=f"step {step}:")
    assert np.max(np.abs(ref.theta - other.theta)) > 1e-3


@pytest.mark.parametrize(
    "method, late_phase, config",
    [
        ("sam", 0.25, Config(rho=0.1)),
        ("looksam", 0.5, Config(reuse="look", reuse_scale="stored", rho=0.1)),
        ("msam", 1.0, Config(direction="momentum", rho=0.1)),
    ],
)
def test_late_phase_starts_sam_at_its_fraction_of_fit(
    method, late_phase, config
):
    """`late_phase=f`: the last fraction `f` of the first fit's steps (2
    epochs of 8) are SAM steps, the reference's `start_step = (1 - f) 16`;
    a second fit keeps that start (its steps are all SAM steps)."""
    params = init_params()
    x, y = make_batches()
    x = x.astype("float32")
    model = reference_mlp(params)
    sam = SAMModel(model, method=method, rho=0.1, late_phase=late_phase)
    compile_sgd(sam)
    config.start_step = round((1 - late_phase) * 2 * len(x))
    ref = Reference(config, params, LR)
    flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    for epochs in (2, 1):
        sam.fit(
            flat_x,
            flat_y,
            batch_size=x.shape[1],
            epochs=epochs,
            shuffle=False,
            verbose=0,
        )
        for _ in range(epochs):
            for step in range(len(x)):
                ref.step(x[step], y[step])
        assert_weights_close(model, ref.params(), msg=f"after {epochs}:")
    assert int(keras.ops.convert_to_numpy(sam._start.value)) == (
        config.start_step
    )


def test_late_phase_needs_the_length_of_fit():
    """Without the steps per epoch (a generator) fit cannot place the late
    phase, and train_on_batch before any fit cannot either: clear errors."""
    x, y = make_batches()
    sam = SAMModel(reference_mlp(init_params()), method="sam", late_phase=0.5)
    compile_sgd(sam)

    def batches():
        yield from zip(x.astype("float32"), y)

    with pytest.raises(ValueError, match="steps_per_epoch"):
        sam.fit(batches(), shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="has\n?.*not been fit"):
        sam.train_on_batch(x[0].astype("float32"), y[0])
    sam.fit(batches(), steps_per_epoch=len(x), shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(sam._start.value)) == len(x) // 2
