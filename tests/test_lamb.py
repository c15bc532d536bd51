"""keras_sam.optimizers.LAMB against a NumPy reference of Algorithm 2."""

import keras
import numpy as np
import pytest
from keras import ops
from support.reference import lamb

from keras_sam.optimizers import LAMB

SHAPES = {"kernel": (4, 3), "bias": (3,), "gamma": (3,), "zero": (2, 2)}


def _problem(steps=5, seed=0):
    rng = np.random.default_rng(seed)
    weights = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    weights["zero"] = np.zeros(SHAPES["zero"])  # ||w|| = 0: trust ratio 1
    grads = [
        {n: rng.normal(size=s) for n, s in SHAPES.items()} for _ in range(steps)
    ]
    return weights, grads


def _run(optimizer, weights, grads):
    variables = [
        keras.Variable(np.asarray(weights[n], "float32"), name=n)
        for n in SHAPES
    ]
    trajectory = []
    for step in grads:
        optimizer.apply(
            [
                ops.convert_to_tensor(np.asarray(step[n], "float32"))
                for n in SHAPES
            ],
            variables,
        )
        trajectory.append(
            {
                n: ops.convert_to_numpy(v.value)
                for n, v in zip(SHAPES, variables)
            }
        )
    return trajectory


def _assert_trajectory(actual, expected):
    for step, (a, e) in enumerate(zip(actual, expected)):
        for n in SHAPES:
            np.testing.assert_allclose(
                a[n], e[n], rtol=2e-5, atol=1e-6, err_msg=f"step {step} {n}"
            )


RANK1 = ("bias", "gamma")


@pytest.mark.parametrize(
    "kwargs, reference",
    [
        ({}, {}),
        (
            {"weight_decay": 0.1},
            {"weight_decay": 0.1, "no_decay": RANK1, "no_adaptation": RANK1},
        ),
        (
            {"weight_decay": 0.3, "exclude_from_weight_decay": ["bias"]},
            {
                "weight_decay": 0.3,
                "no_decay": ("bias",),
                "no_adaptation": ("bias",),
            },
        ),
        (
            {
                "weight_decay": 0.1,
                "exclude_from_weight_decay": ["gamma"],
                "exclude_from_layer_adaptation": [],
            },
            {"weight_decay": 0.1, "no_decay": ("gamma",)},
        ),
        (
            {"weight_decay": 0.1, "exclude_from_weight_decay": lambda v: False},
            {"weight_decay": 0.1},
        ),
        (
            {"beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3},
            {
                "beta_1": 0.5,
                "beta_2": 0.9,
                "epsilon": 1e-3,
                "no_adaptation": RANK1,
            },
        ),
    ],
)
def test_matches_reference(kwargs, reference):
    weights, grads = _problem()
    reference.setdefault("no_adaptation", ())
    if not kwargs:  # defaults: rank <= 1 is excluded from adaptation
        reference["no_adaptation"] = RANK1
    expected = lamb(weights, grads, lr=0.01, **reference)
    _assert_trajectory(_run(LAMB(0.01, **kwargs), weights, grads), expected)


def test_weight_decay_sits_inside_the_trust_ratio():
    """Unlike keras.optimizers.Lamb (decoupled decay): the two differ."""
    weights, grads = _problem(steps=3)
    ours = _run(
        LAMB(0.01, weight_decay=0.2, exclude_from_weight_decay=[]),
        weights,
        grads,
    )
    keras_lamb = _run(
        keras.optimizers.Lamb(0.01, weight_decay=0.2), weights, grads
    )
    assert not np.allclose(ours[-1]["kernel"], keras_lamb[-1]["kernel"])


def test_learning_rate_schedule_is_read_before_each_update():
    weights, grads = _problem(steps=4)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, 1, 0.5)
    expected = lamb(
        weights, grads, lr=lambda t: 0.02 * 0.5**t, no_adaptation=RANK1
    )
    _assert_trajectory(_run(LAMB(schedule), weights, grads), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clipnorm": 0.5},
        {"global_clipnorm": 0.5},
        {"use_ema": True},
        {"gradient_accumulation_steps": 2},
    ],
)
def test_base_optimizer_keywords_train(kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=LAMB(0.01, weight_decay=0.01, **kwargs), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_clipnorm_is_applied_before_the_update():
    weights, grads = _problem(steps=3)
    clipped = [
        {n: g[n] * min(1.0, 0.5 / np.linalg.norm(g[n])) for n in g}
        for g in grads
    ]
    expected = lamb(weights, clipped, lr=0.01, no_adaptation=RANK1)
    _assert_trajectory(_run(LAMB(0.01, clipnorm=0.5), weights, grads), expected)


def test_get_config_round_trip():
    optimizer = LAMB(
        0.02,
        beta_1=0.8,
        weight_decay=0.1,
        exclude_from_weight_decay=["bias", "norm"],
        exclude_from_layer_adaptation=["bias"],
        global_clipnorm=1.0,
    )
    restored = LAMB.from_config(optimizer.get_config())
    assert restored.get_config() == optimizer.get_config()
    assert restored.weight_decay == 0.1


def test_callable_exclusion_cannot_be_serialized():
    with pytest.raises(ValueError, match="cannot be serialized"):
        LAMB(exclude_from_weight_decay=lambda v: True).get_config()


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"beta_1": 1.0}, ValueError, "beta_1"),
        ({"beta_2": -0.1}, ValueError, "beta_2"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"beta_1": "0.9"}, TypeError, "`beta_1` must be a float"),
        ({"epsilon": None}, TypeError, "`epsilon` must be a float"),
        ({"weight_decay": True}, TypeError, "`weight_decay` must be a float"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"exclude_from_weight_decay": "bias"}, TypeError, "list of regular"),
        (
            {"exclude_from_layer_adaptation": ["("]},
            ValueError,
            "invalid regular",
        ),
    ],
)
def test_invalid_arguments(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        LAMB(**kwargs)


@pytest.mark.parametrize("learning_rate", [-1.0, float("nan"), np.inf])
def test_a_negative_or_non_finite_learning_rate_is_an_error(learning_rate):
    with pytest.raises(ValueError) as info:
        LAMB(learning_rate=learning_rate)
    assert str(info.value) == (
        "`learning_rate` must be a float >= 0, a keras.optimizers.schedules."
        "LearningRateSchedule or a callable; received "
        f"learning_rate={learning_rate!r}."
    )


@pytest.mark.parametrize(
    "learning_rate, value",
    [
        (0.0, 0.0),
        (0.5, 0.5),
        (keras.optimizers.schedules.ExponentialDecay(-1.0, 10, 0.5), -1.0),
        (lambda: -1.0, -1.0),
    ],
)
def test_a_schedule_or_a_callable_is_not_checked(learning_rate, value):
    """A float >= 0 is accepted; a schedule or a callable is Keras' to call
    at each step, whatever it returns."""
    optimizer = LAMB(learning_rate=learning_rate)
    assert float(ops.convert_to_numpy(optimizer.learning_rate)) == value


def _decayed_after_one_zero_gradient_step(optimizer, before_build=True):
    """The kernel and bias of a Dense layer (all ones) after one step with
    zero gradients: only the weight decay moves them. Trust ratio 1: the
    update is `lr * weight_decay * w` for a decayed variable."""
    variables = [
        keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
        keras.Variable(np.ones((2,), "float32"), name="bias"),
    ]
    if not before_build:
        optimizer.build(variables)
    call = optimizer.exclude_from_weight_decay_call
    optimizer.exclude_from_weight_decay(**call)
    optimizer.apply([ops.zeros(v.shape) for v in variables], variables)
    return [float(ops.convert_to_numpy(v.value).ravel()[0]) for v in variables]


@pytest.mark.parametrize("before_build", [True, False])
@pytest.mark.parametrize(
    "call, expected",
    [
        ({"var_names": ["kernel"]}, [1.0, 0.5]),
        ({"var_names": ["bias"]}, [0.5, 1.0]),
        ({"var_names": ["kernel", "bias"]}, [1.0, 1.0]),
        ({}, [0.5, 0.5]),
    ],
)
def test_keras_exclude_from_weight_decay_method(call, expected, before_build):
    """Keras' own `optimizer.exclude_from_weight_decay(var_names=...)` (the
    AdamW idiom) excludes variables as the constructor's option does, before
    or after the optimizer is built; each call replaces the last, as in
    Keras. Nothing else excludes here (`exclude_from_weight_decay=[]`)."""
    optimizer = LAMB(
        1.0,
        weight_decay=0.5,
        exclude_from_weight_decay=[],
        exclude_from_layer_adaptation=lambda v: True,
    )
    optimizer.exclude_from_weight_decay_call = call
    assert (
        _decayed_after_one_zero_gradient_step(optimizer, before_build)
        == expected
    )


def test_keras_exclude_from_weight_decay_method_with_var_list():
    variables = [
        keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
        keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
    ]
    optimizer = LAMB(
        1.0, weight_decay=0.5, exclude_from_layer_adaptation=lambda v: True
    )
    optimizer.exclude_from_weight_decay(var_list=variables[:1])
    optimizer.apply([ops.zeros(v.shape) for v in variables], variables)
    values = [float(ops.convert_to_numpy(v.value)[0, 0]) for v in variables]
    assert values == [1.0, 0.5]


def test_weight_decay_attribute_is_lambs():
    """`optimizer.weight_decay` reads the coefficient, as on every Keras
    optimizer; the base class applies no decoupled decay on top of LAMB's
    (one step decays by `lr * weight_decay`, not twice that)."""
    optimizer = LAMB(0.5, weight_decay=0.1)
    assert optimizer.weight_decay == 0.1
    assert optimizer.get_config()["weight_decay"] == 0.1
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    optimizer.apply([ops.zeros(kernel.shape)], [kernel])
    # Trust ratio ||w|| / ||0.1 w|| = 10: w - 0.5 * 10 * 0.1 w = 0.5 w.
    np.testing.assert_allclose(ops.convert_to_numpy(kernel.value), 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss_scale_factor": 128.0},
        {"clipvalue": 0.1},
        {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2},
    ],
)
def test_other_base_optimizer_keywords_act(kwargs):
    """Each keyword changes the trajectory as on any Keras optimizer: a
    loss scale factor is divided out (same trajectory as without), value
    clipping clips, and the EMA overwrites the weights every 2 steps."""
    weights, grads = _problem(steps=4)
    plain = _run(LAMB(0.01), weights, grads)
    changed = _run(LAMB(0.01, **kwargs), weights, grads)
    if "loss_scale_factor" in kwargs:
        scaled = [{n: g[n] * 128.0 for n in g} for g in grads]
        _assert_trajectory(_run(LAMB(0.01, **kwargs), weights, scaled), plain)
    elif "clipvalue" in kwargs:
        clipped = [{n: np.clip(g[n], -0.1, 0.1) for n in g} for g in grads]
        expected = lamb(weights, clipped, lr=0.01, no_adaptation=RANK1)
        _assert_trajectory(changed, expected)
    else:
        assert not np.allclose(changed[-1]["kernel"], plain[-1]["kernel"])
