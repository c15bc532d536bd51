"""Saving and resuming: `get_config`/`from_config`, `.keras` files with the
SAM state, a resumed run equal to an uninterrupted one across processes."""

import json
import zipfile

import h5py
import keras
import numpy as np
import pytest
from conftest import BACKEND
from support.helpers import toy_classification
from support.processes import SUPPORT, run_python
from support.saving import halving_rho, kernels_only

from keras_sam import PRESETS, ProportionalRho, SAMModel


def _model(seed=0):
    """Dense -> BatchNorm -> relu -> Dense -> LayerNorm -> Dense (deterministic:
    no dropout)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dense(8)(h)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


CONFIGS = [{"method": m} for m in PRESETS] + [
    {"method": "sam", "rho": 0.2, "norm": "linf", "start_step": 3},
    {"method": "asam", "adaptive": "layerwise", "eta": 0.1},
    {"method": "asam", "normalize_bias": True},
    {"method": "fsam", "ema_decay": 0.5, "sigma": 0.3},
    {"method": "looksam", "k": 3, "alpha": 0.2},
    {"method": "nusam", "power_iterations": 3, "reuse": "look"},
    {"method": "sam", "perturb": "no_norm", "ascent": "per_replica"},
    {"method": "sam", "rho": keras.optimizers.schedules.CosineDecay(0.1, 9)},
    {"method": "fisher", "rho": halving_rho, "perturb": kernels_only},
    {
        "method": "gsam",
        "gsam_alpha": 0.3,
        "rho": ProportionalRho(
            keras.optimizers.schedules.CosineDecay(0.1, 9),
            lr_max=0.1,
            rho_max=0.2,
            rho_min=0.05,
        ),
    },
    {"method": "wsam", "gamma": 0.7, "decoupled": False},
    {"method": "sam", "policy": "random", "ascent_probability": 0.3},
    {
        "method": "looksam",
        "policy": "random",
        "policy_seed": 4,
        "ascent_probability": keras.optimizers.schedules.CosineDecay(0.8, 9),
    },
    {"method": "asam", "late_phase": 0.25},
    {"method": "msam", "ema_decay": 0.5, "perturb": "no_norm"},
    {
        "method": "looksam",
        "policy": "adaptive",
        "policy_decay": 0.5,
        "policy_threshold": keras.optimizers.schedules.PolynomialDecay(
            1.0, 9, -1.0
        ),
    },
]


def _config_id(config):
    return "-".join(
        f"{k}={getattr(v, '__name__', type(v).__name__)}"
        if callable(v)
        else f"{k}={v}"
        for k, v in config.items()
    )


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_round_trip_keeps_every_option(config):
    model = SAMModel(_model(), **config)
    restored = SAMModel.from_config(json.loads(json.dumps(model.get_config())))
    for name, value in vars(model.options).items():
        other = getattr(restored.options, name)
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            assert type(other) is type(value)
            assert other.get_config() == value.get_config()
        else:
            assert other == value, name


@pytest.mark.parametrize("option", ["rho", "perturb"])
def test_unsaveable_callables_raise_at_save(option, tmp_path):
    value = (lambda t: 0.1) if option == "rho" else (lambda v: True)
    model = SAMModel(_model(), **{option: value})
    _compile(model)
    with pytest.raises(ValueError, match=f"`{option}` is .*register_keras"):
        model.save(tmp_path / "m.keras")


def test_checkpoint_holds_no_copy_of_the_weights(tmp_path):
    """The file holds the model's variables, the SAM state (here LookSAM's
    g_v, one value per parameter, and the counter) and the optimizer's
    (metrics are not saved, as in Keras): nothing transient."""
    x, y = toy_classification(48, seed=1)
    inner = _model()
    model = SAMModel(inner, method="looksam")
    _compile(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        archive.extract("model.weights.h5", tmp_path)
    sizes = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(
            lambda _, item: (
                sizes.append(item.size)
                if isinstance(item, h5py.Dataset)
                else None
            )
        )

    def size(variables):
        return sum(int(np.prod(v.shape)) for v in variables)

    trainable = size(inner.trainable_variables)
    assert model.perturbation_state_size() == trainable  # g_v
    expected = (
        size(inner.variables)  # weights and BatchNorm statistics
        + trainable  # g_v
        + 1  # the SAM step counter
        + size(model.optimizer.variables)  # momentum and counters
    )
    assert sum(sizes) == expected


def test_inner_model_saves_alone_for_inference(tmp_path):
    x, y = toy_classification(48, seed=1)
    model = SAMModel(_model(), method="nusam")
    _compile(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.inner.save(tmp_path / "inner.keras")
    loaded = keras.models.load_model(tmp_path / "inner.keras", compile=False)
    assert not isinstance(loaded, SAMModel)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )


# Every kind of state a run resumes with: LookSAM's g_v (and Look-LayerSAM's
# per-layer one), F-SAM's EMA, nuSAM's vectors, the step counter of SAM-k's
# and late-phase SAM's schedules, WSAM's decoupled term, MSAM's look-ahead,
# AE-LookSAM's policy statistics; the optimizer's momentum in every run.
RESUME_OPTIONS = {
    "looksam": {"method": "looksam", "k": 3},
    "looklayersam": {"method": "looklayersam", "k": 2},
    "fsam": {"method": "fsam"},
    "nusam": {"method": "nusam"},
    "samk": {"method": "samk", "k": 3},
    "wsam": {"method": "wsam"},
    "msam": {"method": "msam"},
    "late_phase": {"method": "sam", "late_phase": 0.5},  # SAM from step 3
    "aelooksam": {"method": "looksam", "policy": "adaptive"},
}


def _resume_model(name):
    return SAMModel(
        _model(),
        rho=keras.optimizers.schedules.ExponentialDecay(0.1, 4, 0.5),
        **RESUME_OPTIONS[name],
    )


def test_resume_in_a_new_process_equals_an_uninterrupted_run(tmp_path):
    """N steps, save, load in a fresh process: every variable (the weights,
    the SAM state, the optimizer's) as saved; M more steps: bit for bit the
    weights of N + M uninterrupted steps (shuffle off, no dropout)."""
    x, y = toy_classification(48, seed=1)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    saved, expected = {}, {}
    for name in RESUME_OPTIONS:
        model = _resume_model(name)
        _compile(model)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert int(keras.ops.convert_to_numpy(model.sam_state.iterations)) == 6
        model.save(tmp_path / f"{name}.keras")
        saved[name] = _values(model.variables + model.optimizer.variables)
        # The uninterrupted run: the same model, one more epoch.
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        expected[name] = _values(model.variables)

    run_python(
        [SUPPORT / "resume.py", tmp_path, *RESUME_OPTIONS], backend=BACKEND
    )
    for name in RESUME_OPTIONS:
        for stage, want in (("loaded", saved), ("resumed", expected)):
            with np.load(tmp_path / f"{name}.{stage}.npz") as got:
                got = [got[f"v{i}"] for i in range(len(got.files))]
            assert len(got) == len(want[name]), f"{name} {stage}"
            for i, (a, b) in enumerate(zip(want[name], got)):
                np.testing.assert_array_equal(
                    a, b, err_msg=f"{name} {stage} v{i}"
                )
