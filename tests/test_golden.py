"""Golden trajectories: every preset and several compositions, step by step,
against the independent NumPy reference (tests/reference.py)."""

import keras
import numpy as np
import pytest
from helpers import (
    LR,
    Batches,
    assert_weights_close,
    compile_sgd,
    reference_mlp,
)
from reference import (
    NORM_NAMES,
    Config,
    Reference,
    init_params,
    make_batches,
    step_per_replica,
)

from keras_sam import ProportionalRho, SAMModel

NO_NORM = ("w1", "b1", "w2", "b2")
# AE-SAM's policy, quicker than the paper's (delta 0.9, c 0): a mixture of
# ascents and plain steps within the 8 steps (the first steps always ascend
# while the running mean, from 0, catches up with ||g||^2).
AE = dict(policy_decay=0.5, policy_threshold=0.5)

# name -> (SAMModel options, the same point spelled out for the reference)
CASES = {
    "sam": (dict(method="sam", rho=0.1), Config(rho=0.1)),
    "sam_linf": (
        dict(method="sam", rho=0.01, norm="linf"),
        Config(rho=0.01, norm="linf"),
    ),
    "samon": (
        dict(method="samon", rho=0.1),
        Config(rho=0.1, perturbed=NORM_NAMES),
    ),
    "no_norm": (
        dict(method="sam", rho=0.1, perturb="no_norm"),
        Config(rho=0.1, perturbed=NO_NORM),
    ),
    "asam": (
        dict(method="asam", rho=0.5),
        Config(geometry="adaptive", rho=0.5),
    ),
    "asam_layerwise": (
        dict(method="asam", rho=0.05, adaptive="layerwise", eta=0.1),
        Config(geometry="adaptive", layerwise=True, eta=0.1, rho=0.05),
    ),
    "asam_linf": (
        dict(method="asam", rho=0.02, norm="linf"),
        Config(geometry="adaptive", norm="linf", rho=0.02),
    ),
    "asam_normalize_bias": (
        dict(method="asam", rho=0.5, normalize_bias=True, eta=0.05),
        Config(geometry="adaptive", normalize_bias=True, eta=0.05, rho=0.5),
    ),
    "fisher": (
        dict(method="fisher", rho=0.1),
        Config(geometry="fisher", eta=1.0, rho=0.1),
    ),
    "fsam": (dict(method="fsam", rho=0.5), Config(friendly=True, rho=0.5)),
    "fsam_options": (
        dict(method="fsam", rho=0.1, ema_decay=0.5, sigma=0.8),
        Config(friendly=True, ema_decay=0.5, sigma=0.8, rho=0.1),
    ),
    "fasam": (
        dict(method="fasam", rho=0.5),
        Config(geometry="adaptive", friendly=True, rho=0.5),
    ),
    "layersam": (
        dict(method="layersam", rho=0.1),
        Config(geometry="layer", layer_scale="global", rho=0.1),
    ),
    "layersam_layer": (
        dict(method="layersam", rho=0.02, layer_scale="layer"),
        Config(geometry="layer", layer_scale="layer", rho=0.02),
    ),
    "layersam_eq7": (
        dict(method="layersam", rho=0.05, layer_scale="eq7"),
        Config(geometry="layer", layer_scale="eq7", rho=0.05),
    ),
    "looksam": (
        dict(method="looksam", rho=0.1, k=3),
        Config(reuse="look", k=3, reuse_scale="stored", rho=0.1),
    ),
    "looksam_gradient": (
        dict(method="looksam", rho=0.1, k=3, alpha=0.5, reuse_scale="gradient"),
        Config(reuse="look", k=3, alpha=0.5, reuse_scale="gradient", rho=0.1),
    ),
    "looksam_relative": (
        dict(method="looksam", rho=0.1, k=3, reuse_scale="relative"),
        Config(reuse="look", k=3, reuse_scale="relative", rho=0.1),
    ),
    "looklayersam": (
        dict(method="looklayersam", rho=0.05, k=3),
        Config(
            geometry="layer",
            layer_scale="global",
            reuse="look",
            reuse_scale="relative",
            k=3,
            rho=0.05,
        ),
    ),
    "looklayersam_paper": (
        dict(
            method="looklayersam",
            rho=0.05,
            k=3,
            layer_scale="eq7",
            reuse_scale="gradient",
        ),
        Config(
            geometry="layer",
            reuse="look",
            k=3,
            layer_scale="eq7",
            reuse_scale="gradient",
            rho=0.05,
        ),
    ),
    "looklayersam_layer_relative": (
        dict(
            method="looklayersam",
            rho=0.02,
            k=3,
            layer_scale="layer",
            reuse_scale="relative",
        ),
        Config(
            geometry="layer",
            reuse="look",
            k=3,
            layer_scale="layer",
            reuse_scale="relative",
            rho=0.02,
        ),
    ),
    "samk": (
        dict(method="samk", rho=0.1, k=3),
        Config(reuse="every_k", k=3, rho=0.1),
    ),
    "start_step": (
        dict(method="sam", rho=0.1, start_step=3),
        Config(start_step=3, rho=0.1),
    ),
    "rho_schedule": (
        dict(
            method="sam",
            rho=keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5),
        ),
        Config(rho=lambda t: 0.2 * 0.5 ** (t / 2)),
    ),
    "nusam": (
        dict(method="nusam", rho=0.1),
        Config(geometry="nuclear", rho=0.1),
    ),
    "nusam_power_iterations": (
        dict(method="nusam", rho=0.1, power_iterations=3),
        Config(geometry="nuclear", power_iterations=3, rho=0.1),
    ),
    "nusam_exact_svd": (
        dict(method="nusam", rho=0.1, power_iterations=50),
        Config(geometry="nuclear", exact_svd=True, rho=0.1),
    ),
    "nusam_norm": (
        dict(method="nusam_norm", rho=0.1),
        Config(geometry="nuclear_norm", rho=0.1),
    ),
    "nusam_norm_exact_svd": (
        dict(method="nusam_norm", rho=0.1, power_iterations=50),
        Config(geometry="nuclear_norm", exact_svd=True, rho=0.1),
    ),
    # Compositions: points no single paper defines.
    "look_nusam": (
        dict(method="nusam", rho=0.1, reuse="look", k=3),
        Config(
            geometry="nuclear", reuse="look", reuse_scale="stored", k=3, rho=0.1
        ),
    ),
    "look_samon": (
        dict(method="looksam", rho=0.1, perturb="norm", k=3),
        Config(
            reuse="look",
            reuse_scale="stored",
            k=3,
            perturbed=NORM_NAMES,
            rho=0.1,
        ),
    ),
    "friendly_layerwise_adaptive_on_norm": (
        dict(method="fasam", rho=0.1, adaptive="layerwise", perturb="norm"),
        Config(
            geometry="adaptive",
            layerwise=True,
            friendly=True,
            perturbed=NORM_NAMES,
            rho=0.1,
        ),
    ),
    "look_fsam_delayed": (
        dict(method="fsam", rho=0.1, reuse="look", k=2, start_step=2),
        Config(
            friendly=True,
            reuse="look",
            reuse_scale="stored",
            k=2,
            start_step=2,
            rho=0.1,
        ),
    ),
    "gsam": (
        dict(method="gsam", rho=0.1),
        Config(descent="gsam", gsam_alpha=0.6, rho=0.1),
    ),
    "gsam_alpha": (
        dict(method="gsam", rho=0.2, gsam_alpha=0.3),
        Config(descent="gsam", gsam_alpha=0.3, rho=0.2),
    ),
    "wsam": (
        dict(method="wsam", rho=0.1),
        Config(descent="wsam", gamma=0.97, decoupled=True, rho=0.1),
    ),
    "wsam_coupled": (
        dict(method="wsam", rho=0.1, gamma=0.7, decoupled=False),
        Config(descent="wsam", gamma=0.7, rho=0.1),
    ),
    "aesam": (
        dict(method="sam", rho=0.1, policy="adaptive", **AE),
        Config(policy="adaptive", rho=0.1, **AE),
    ),
    "aesam_threshold_schedule": (
        dict(
            method="sam",
            rho=0.1,
            policy="adaptive",
            policy_decay=0.5,
            policy_threshold=keras.optimizers.schedules.PolynomialDecay(
                1.0, 8, -1.0
            ),
        ),
        Config(
            policy="adaptive",
            policy_decay=0.5,
            policy_threshold=lambda t: 1.0 - 2.0 * t / 8,
            rho=0.1,
        ),
    ),
    "gsam_rho_follows_the_learning_rate": (
        dict(
            method="gsam",
            rho=ProportionalRho(
                keras.optimizers.schedules.CosineDecay(0.1, 8),
                lr_max=0.1,
                rho_max=0.2,
                rho_min=0.05,
            ),
        ),
        Config(
            descent="gsam",
            rho=lambda t: 0.05 + 0.15 * 0.5 * (1 + np.cos(np.pi * t / 8)),
        ),
    ),
    "samk_fisher_kernels": (
        dict(
            method="fisher",
            rho=0.1,
            reuse="every_k",
            k=2,
            perturb=lambda v: v.name == "kernel",
        ),
        Config(
            geometry="fisher",
            eta=1.0,
            reuse="every_k",
            k=2,
            perturbed=("w1", "w2"),
            rho=0.1,
        ),
    ),
    "gsam_samon": (
        dict(method="gsam", rho=0.1, perturb="norm"),
        Config(descent="gsam", perturbed=NORM_NAMES, rho=0.1),
    ),
    "wsam_nusam": (
        dict(method="nusam", rho=0.1, descent="wsam"),
        Config(
            geometry="nuclear",
            descent="wsam",
            gamma=0.97,
            decoupled=True,
            rho=0.1,
        ),
    ),
    "aelooksam": (
        dict(method="looksam", rho=0.1, policy="adaptive", **AE),
        Config(
            reuse="look", reuse_scale="stored", policy="adaptive", rho=0.1, **AE
        ),
    ),
    "look_gsam": (
        dict(method="looksam", rho=0.1, k=3, descent="gsam"),
        Config(
            reuse="look", reuse_scale="stored", k=3, descent="gsam", rho=0.1
        ),
    ),
    "ae_wsam_fsam_delayed": (
        dict(
            method="fsam",
            rho=0.1,
            start_step=2,
            descent="wsam",
            decoupled=False,
            policy="adaptive",
            **AE,
        ),
        Config(
            friendly=True,
            start_step=2,
            descent="wsam",
            gamma=0.97,
            policy="adaptive",
            rho=0.1,
            **AE,
        ),
    ),
}


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


@pytest.mark.parametrize("case", sorted(CASES))
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
    from keras_sam import PRESETS

    covered = {options["method"] for options, _ in CASES.values()}
    assert covered == set(PRESETS)
    assert len(CASES) >= len(PRESETS) + 2


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
