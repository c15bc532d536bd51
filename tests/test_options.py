"""Presets, overrides and the error for every invalid option value."""

import dataclasses
import pathlib
import re

import keras
import pytest

from keras_sam import PRESETS, SAMModel
from keras_sam.src.options import OPTIONS


def _mlp(norm=True):
    layers = [keras.Input((4,)), keras.layers.Dense(8)]
    if norm:
        layers.append(keras.layers.LayerNormalization())
    layers.append(keras.layers.Dense(2))
    return keras.Sequential(layers)


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_preset_constructs(method):
    sam = SAMModel(_mlp(), method=method)
    assert sam.options.method == method
    assert sam.inner is not None


def test_defaults_follow_the_design_table():
    o = SAMModel(_mlp()).options
    assert (o.method, o.geometry, o.rho, o.perturb) == (
        "sam",
        "l2",
        0.05,
        "all",
    )
    assert (o.start_step, o.norm, o.ascent) == (0, "l2", "global")
    assert (o.friendly, o.reuse, o.k, o.alpha) == (False, None, None, None)
    assert SAMModel(_mlp(), method="asam").options.eta == 0.01
    assert SAMModel(_mlp(), method="fisher").options.eta == 1.0
    fsam = SAMModel(_mlp(), method="fsam").options
    assert (fsam.ema_decay, fsam.sigma) == (0.9, 1.0)
    look = SAMModel(_mlp(), method="looksam").options
    assert (look.k, look.alpha) == (5, 0.7)


def test_explicit_options_override_the_preset():
    o = SAMModel(
        _mlp(), method="looksam", perturb="norm", friendly=True, k=3
    ).options
    assert (o.reuse, o.perturb, o.friendly, o.k) == ("look", "norm", True, 3)
    assert SAMModel(_mlp(), method="samon", perturb="all").options.perturb == (
        "all"
    )


def test_inner_is_the_wrapped_model():
    model = _mlp()
    assert SAMModel(model).inner is model


@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        ({"method": "sharp"}, ValueError, ["method", "'sharp'", "looksam"]),
        ({"method": 3}, TypeError, ["method", "3", "sam"]),
        ({"rho": -0.1}, ValueError, ["rho", "-0.1", "float >= 0"]),
        ({"rho": float("nan")}, ValueError, ["rho", "nan"]),
        ({"rho": float("inf")}, ValueError, ["rho", "inf"]),
        ({"rho": "big"}, TypeError, ["rho", "'big'", "LearningRateSchedule"]),
        ({"rho": True}, TypeError, ["rho", "True"]),
        ({"perturb": "bn"}, ValueError, ["perturb", "'bn'", "no_norm"]),
        ({"perturb": 3}, TypeError, ["perturb", "3", "callable"]),
        ({"start_step": -1}, ValueError, ["start_step", "-1", "int >= 0"]),
        ({"start_step": 1.5}, TypeError, ["start_step", "1.5"]),
        (
            {"method": "looksam", "k": 0},
            ValueError,
            ["`k`", "k=0", "int >= 1"],
        ),
        (
            {"method": "samk", "k": 2.0},
            TypeError,
            ["`k`", "k=2.0", "int >= 1"],
        ),
        ({"method": "samk", "k": True}, TypeError, ["`k`", "True"]),
        (
            {"method": "looksam", "alpha": 1.5},
            ValueError,
            ["alpha", "1.5", "[0.0, 1.0]"],
        ),
        (
            {"method": "looksam", "alpha": -0.1},
            ValueError,
            ["alpha", "-0.1", "[0.0, 1.0]"],
        ),
        (
            {"method": "looksam", "alpha": "x"},
            TypeError,
            ["alpha", "'x'", "[0.0, 1.0]"],
        ),
        (
            {"method": "nusam", "power_iterations": 0},
            ValueError,
            ["power_iterations", "power_iterations=0", "int >= 1"],
        ),
        (
            {"method": "nusam", "power_iterations": 1.0},
            TypeError,
            ["power_iterations", "power_iterations=1.0", "int >= 1"],
        ),
        (
            {"method": "fsam", "ema_decay": 1.0},
            ValueError,
            ["ema_decay", "1.0", "[0.0, 1.0)"],
        ),
        (
            {"method": "fsam", "ema_decay": -0.5},
            ValueError,
            ["ema_decay", "-0.5"],
        ),
        ({"method": "fsam", "sigma": -1.0}, ValueError, ["sigma", "-1.0"]),
        (
            {"method": "fsam", "ema_decay": "0.9"},
            TypeError,
            ["ema_decay", "'0.9'", "[0.0, 1.0)"],
        ),
        (
            {"method": "fsam", "sigma": "1"},
            TypeError,
            ["sigma", "'1'", "float >= 0.0"],
        ),
        ({"method": "asam", "eta": -1.0}, ValueError, ["eta", "-1.0"]),
        ({"method": "asam", "eta": float("inf")}, ValueError, ["eta", "inf"]),
        (
            {"method": "fisher", "eta": "x"},
            TypeError,
            ["eta", "'x'", "float >= 0.0"],
        ),
        (
            {"method": "asam", "adaptive": "global"},
            ValueError,
            ["adaptive", "'global'", "layerwise"],
        ),
        ({"norm": "l1"}, ValueError, ["norm", "'l1'", "linf"]),
        (
            {"method": "layersam", "norm": "linf"},
            ValueError,
            ["norm='linf'", "layersam", "layer"],
        ),
        (
            {"method": "fisher", "norm": "linf"},
            ValueError,
            ["norm='linf'", "fisher"],
        ),
        (
            {"method": "nusam", "norm": "linf"},
            ValueError,
            ["norm='linf'", "nusam", "'nuclear' geometry"],
        ),
        ({"reuse": "sometimes"}, ValueError, ["reuse", "'sometimes'", "look"]),
        ({"ascent": "local"}, ValueError, ["ascent", "'local'", "per_replica"]),
        ({"friendly": 1}, TypeError, ["friendly", "1", "True or False"]),
        (
            {"method": "asam", "normalize_bias": "yes"},
            TypeError,
            ["normalize_bias", "'yes'"],
        ),
        # Options that do not apply to the chosen method are errors, not
        # silently ignored.
        ({"k": 3}, ValueError, ["`k`", "reuse"]),
        ({"method": "samk", "alpha": 0.5}, ValueError, ["alpha", "look"]),
        ({"eta": 0.1}, ValueError, ["eta", "adaptive", "fisher"]),
        ({"adaptive": "layerwise"}, ValueError, ["adaptive", "asam"]),
        ({"normalize_bias": True}, ValueError, ["normalize_bias", "asam"]),
        (
            {"ema_decay": 0.5},
            ValueError,
            ["ema_decay", "friendly=True", "direction='momentum'"],
        ),
        ({"sigma": 0.5}, ValueError, ["sigma", "friendly=True"]),
        (
            {"method": "fsam", "friendly": False, "sigma": 0.5},
            ValueError,
            ["sigma", "friendly=True"],
        ),
        (
            {"power_iterations": 2},
            ValueError,
            ["power_iterations", "nuclear geometries", "nusam"],
        ),
        # MSAM's one pass has no clean gradient beside the look-ahead's.
        (
            {"direction": "ahead"},
            ValueError,
            ["direction", "'ahead'", "'gradient'", "'momentum'"],
        ),
        (
            {"method": "msam", "reuse": "look"},
            ValueError,
            ["direction='momentum'", "reuse=None", "reuse='look'"],
        ),
        (
            {"method": "msam", "descent": "gsam"},
            ValueError,
            ["direction='momentum'", "descent='sam'", "descent='gsam'"],
        ),
        (
            {"method": "msam", "policy": "adaptive"},
            ValueError,
            ["direction='momentum'", "policy='periodic'"],
        ),
        (
            {"method": "msam", "friendly": True},
            ValueError,
            ["direction='momentum'", "friendly=False"],
        ),
        (
            {"method": "msam", "batch_splits": 2},
            ValueError,
            ["direction='momentum'", "batch_splits=1", "batch_splits=2"],
        ),
        (
            {"method": "msam", "ascent": "per_replica"},
            ValueError,
            ["direction='momentum'", "ascent='global'"],
        ),
        (
            {"method": "nusam", "direction": "momentum"},
            ValueError,
            ["direction='momentum'", "'nuclear' geometry", "l2, adaptive"],
        ),
        (
            {
                "method": "layersam",
                "direction": "momentum",
                "layer_scale": "eq7",
            },
            ValueError,
            ["direction='momentum'", "layer_scale='eq7'"],
        ),
        (
            {"method": "msam", "ema_decay": 1.0},
            ValueError,
            ["ema_decay", "1.0"],
        ),
        # Applicability is checked before the value.
        ({"eta": "x"}, ValueError, ["eta", "applies only", "eta='x'"]),
    ],
)
def test_invalid_option_names_option_value_and_allowed(
    kwargs, error, fragments
):
    with pytest.raises(error) as info:
        SAMModel(_mlp(), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_unknown_method_lists_every_preset():
    with pytest.raises(ValueError) as info:
        SAMModel(_mlp(), method="nope")
    for preset in PRESETS:
        assert repr(preset) in str(info.value)


def test_norm_mask_needs_normalization_layers():
    with pytest.raises(ValueError, match="perturb='norm'.*has none"):
        SAMModel(_mlp(norm=False), method="samon")
    with pytest.raises(ValueError, match="perturb='norm'"):
        SAMModel(_mlp(norm=False), perturb="norm")


def test_norm_mask_finds_normalization_subclasses():
    class MyNorm(keras.layers.LayerNormalization):
        pass

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            MyNorm(),
            keras.layers.Dense(2),
        ]
    )
    assert SAMModel(model, method="samon").options.perturb == "norm"


def test_mask_selecting_nothing_is_an_error():
    with pytest.raises(ValueError, match="selects none"):
        SAMModel(_mlp(), perturb=lambda v: False)


@pytest.mark.parametrize(
    "model, error, fragment",
    [
        ("a string", TypeError, "Keras model or layer"),
        (lambda x: x, TypeError, "Keras model or layer"),
    ],
)
def test_model_must_be_keras(model, error, fragment):
    with pytest.raises(error, match=fragment):
        SAMModel(model)


def test_samodel_cannot_wrap_a_samodel():
    with pytest.raises(TypeError, match="already a SAMModel"):
        SAMModel(SAMModel(_mlp()))


def test_a_rho_schedule_or_callable_is_accepted():
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 100)
    assert SAMModel(_mlp(), rho=schedule).options.rho is schedule
    assert callable(SAMModel(_mlp(), rho=lambda t: 0.1).options.rho)


def test_options_apply_after_the_overrides():
    o = SAMModel(_mlp(), friendly=True, sigma=0.5).options
    assert (o.friendly, o.sigma, o.ema_decay) == (True, 0.5, 0.9)
    o = SAMModel(_mlp(), method="nusam", reuse="look", k=2).options
    assert (o.reuse, o.k, o.alpha, o.power_iterations) == ("look", 2, 0.7, 1)


def test_nusam_mask_without_weight_matrices_is_an_error():
    with pytest.raises(ValueError, match="kernels of Dense and EinsumDense"):
        SAMModel(_mlp(), method="nusam", perturb="norm")


def test_frozen_model_has_nothing_to_perturb():
    model = _mlp()
    model.trainable = False
    with pytest.raises(ValueError, match="has no trainable float variables"):
        SAMModel(model)


def test_unbuilt_model_checks_the_mask_at_build():
    model = keras.Sequential([keras.layers.Dense(2)])
    sam = SAMModel(model, perturb=lambda v: False)
    with pytest.raises(ValueError, match="selects none of the 2 trainable"):
        sam.build((None, 4))


def test_unsupported_backend_is_an_error(monkeypatch):
    model = _mlp()
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(
        NotImplementedError, match="active Keras backend is 'numpy'"
    ):
        SAMModel(model)


def test_variable_unfrozen_after_compile_needs_a_compile():
    model = _mlp()
    model.layers[0].trainable = False
    sam = SAMModel(model, method="fsam")
    sam.compile(optimizer="sgd", loss="mse")
    model.layers[0].trainable = True
    with pytest.raises(RuntimeError, match="changed since the last compile"):
        sam.perturbation_state_size()
    sam.compile(optimizer="sgd", loss="mse")
    assert len(sam.sam_state.ema) == 6


def test_an_option_can_be_set_back_to_none_over_a_preset():
    """Every option defaults to "not given" (a sentinel), so `None` is a
    value: `reuse=None` turns LookSAM's reuse off."""
    o = SAMModel(_mlp(), method="looksam", reuse=None).options
    assert (o.reuse, o.k, o.alpha, o.reuse_scale) == (None, None, None, None)


def test_unknown_keyword_lists_the_options():
    with pytest.raises(TypeError) as info:
        SAMModel(_mlp(), method="looksam", alpah=0.5)
    message = str(info.value)
    assert "['alpah']" in message and "'alpha'" in message


def test_signature_and_docstring_follow_the_specification():
    import inspect

    from keras_sam.src.options import OPTION_NAMES, SAMOptions

    parameters = list(inspect.signature(SAMModel.__init__).parameters)
    assert parameters[:3] == ["self", "model", "method"]
    assert tuple(parameters[3:-1]) == OPTION_NAMES
    fields = [f.name for f in dataclasses.fields(SAMOptions)]
    assert tuple(fields) == ("method", "geometry", *OPTION_NAMES)
    documented = re.findall(r"^ {8}(\w+): ", SAMModel.__doc__, re.MULTILINE)
    assert documented == ["model", "method", *OPTION_NAMES]


def test_config_records_every_resolved_option(monkeypatch):
    """A saved model keeps the values it trained with, even if a preset's
    defaults change in a later version."""
    from keras_sam.src import options

    sam = SAMModel(_mlp(), method="looksam", k=3)
    config = sam.get_config()
    assert {k: config[k] for k in ("method", "rho", "k", "alpha")} == {
        "method": "looksam",
        "rho": sam.options.rho,
        "k": 3,
        "alpha": sam.options.alpha,
    }
    assert "eta" not in config  # does not apply to looksam
    changed = dataclasses.replace(
        options.PRESETS["looksam"],
        values={**options.PRESETS["looksam"].values, "alpha": 0.123},
    )
    monkeypatch.setitem(options.PRESETS, "looksam", changed)
    assert SAMModel(_mlp(), method="looksam").options.alpha == 0.123
    restored = SAMModel.from_config(config)
    assert restored.options == sam.options
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        (
            {"method": "layersam", "layer_scale": "per_layer"},
            ValueError,
            ["layer_scale", "'per_layer'", "'global'"],
        ),
        ({"layer_scale": "layer"}, ValueError, ["layer_scale", "layersam"]),
        (
            {"method": "looksam", "reuse_scale": "paper"},
            ValueError,
            ["reuse_scale", "'paper'", "'stored'"],
        ),
        (
            {"method": "samk", "reuse_scale": "stored"},
            ValueError,
            ["reuse_scale", "reuse='look'"],
        ),
    ],
)
def test_invalid_new_options(kwargs, error, fragments):
    with pytest.raises(error) as info:
        SAMModel(_mlp(), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_docstring_preset_table_is_presets():
    rows = re.findall(
        r"^    \| `\"(\w+)\"` \| (\w+) \| (\w+) \| (\w+) \| (\w+) "
        r"\| ([\w ]+) \| ([\d.]+) \|$",
        SAMModel.__doc__,
        re.MULTILINE,
    )
    table = {
        name: (geometry, direction, reuse, descent, perturb, float(rho))
        for name, geometry, direction, reuse, descent, perturb, rho in rows
    }
    expected = {}
    for name, preset in PRESETS.items():
        matrices = preset.geometry in ("nuclear", "nuclear_norm")
        expected[name] = (
            preset.geometry,
            "friendly"
            if preset.values.get("friendly")
            else preset.values.get("direction", "gradient"),
            preset.values.get("reuse") or "none",
            preset.values.get("descent", "sam"),
            "matrices" if matrices else preset.values.get("perturb", "all"),
            preset.values["rho"],
        )
    assert table == expected


def test_hyperparameters_page_lists_each_presets_defaults():
    """docs/hyperparameters.md's table of defaults is `PRESETS`: each
    preset's radius (and the other values it sets) with its source."""
    page = pathlib.Path(__file__).parents[1] / "docs" / "hyperparameters.md"
    section = page.read_text().split("## Each preset's defaults")[1]
    section = section.split("\n## ")[0]
    rows = re.findall(
        r"^\| `(\w+)` \| ([\d.]+) \| ([^|]*) \|", section, re.MULTILINE
    )
    table = {name: (float(rho), others.strip()) for name, rho, others in rows}
    expected = {}
    for name, preset in PRESETS.items():
        others = ", ".join(
            f"`{key}={value!r}`"
            for key, value in preset.values.items()
            if key
            not in (
                "rho",
                "perturb",
                "friendly",
                "reuse",
                "descent",
                "direction",
            )
        )
        expected[name] = (preset.values["rho"], others or "-")
    assert table == expected


def test_each_preset_uses_its_radius_unless_rho_is_given():
    for name, preset in PRESETS.items():
        assert SAMModel(_mlp(), method=name).options.rho == preset.values["rho"]
    assert SAMModel(_mlp(), method="samon", rho=0.07).options.rho == 0.07


@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        (
            {"descent": "lookahead"},
            ValueError,
            ["descent", "'lookahead'", "'gsam'", "'wsam'"],
        ),
        (
            {"method": "gsam", "gsam_alpha": -0.1},
            ValueError,
            ["gsam_alpha", "-0.1", "float >= 0.0"],
        ),
        (
            {"method": "gsam", "gsam_alpha": "big"},
            TypeError,
            ["gsam_alpha", "'big'", "float >= 0.0"],
        ),
        (
            {"method": "wsam", "gamma": 1.0},
            ValueError,
            ["gamma", "1.0", "[0.0, 1.0)"],
        ),
        ({"method": "wsam", "gamma": -0.1}, ValueError, ["gamma", "-0.1"]),
        (
            {"method": "wsam", "decoupled": 1},
            TypeError,
            ["decoupled", "1", "True or False"],
        ),
        ({"policy": "sometimes"}, ValueError, ["policy", "'adaptive'"]),
        (
            {"policy": "adaptive", "policy_decay": 1.0},
            ValueError,
            ["policy_decay", "1.0", "[0.0, 1.0)"],
        ),
        (
            {"policy": "adaptive", "policy_threshold": float("nan")},
            ValueError,
            ["policy_threshold", "nan", "finite float"],
        ),
        (
            {"policy": "adaptive", "policy_threshold": "high"},
            TypeError,
            ["policy_threshold", "'high'", "LearningRateSchedule"],
        ),
        # Options of a rule or policy that is not chosen.
        ({"gsam_alpha": 0.5}, ValueError, ["gsam_alpha", "descent='gsam'"]),
        ({"gamma": 0.5}, ValueError, ["gamma", "applies only", "'wsam'"]),
        (
            {"method": "gsam", "decoupled": True},
            ValueError,
            ["decoupled", "descent='wsam'"],
        ),
        (
            {"policy_decay": 0.5},
            ValueError,
            ["policy_decay", "policy='adaptive'"],
        ),
        (
            {"policy_threshold": 1.0},
            ValueError,
            ["policy_threshold", "policy='adaptive'"],
        ),
        # SAM-k's period and the adaptive policy exclude each other.
        (
            {"method": "samk", "policy": "adaptive"},
            ValueError,
            ["reuse='every_k'", "policy='adaptive'", "reuse='look'"],
        ),
        (
            {"method": "samk", "policy": "random"},
            ValueError,
            ["reuse='every_k'", "policy='random'", "RST"],
        ),
        # Late-phase SAM: a fraction of fit's steps, or start_step.
        ({"late_phase": 0.0}, ValueError, ["late_phase", "0.0", "(0, 1]"]),
        ({"late_phase": 1.5}, ValueError, ["late_phase", "1.5", "(0, 1]"]),
        ({"late_phase": "x"}, TypeError, ["late_phase", "'x'", "(0, 1]"]),
        (
            {"late_phase": 0.2, "start_step": 5},
            ValueError,
            ["late_phase", "start_step", "not both", "start_step=5"],
        ),
        # RST's probability and seed.
        (
            {"policy": "random", "ascent_probability": 1.5},
            ValueError,
            ["ascent_probability", "1.5", "[0, 1]"],
        ),
        (
            {"policy": "random", "ascent_probability": -0.1},
            ValueError,
            ["ascent_probability", "-0.1", "[0, 1]"],
        ),
        (
            {"policy": "random", "ascent_probability": "half"},
            TypeError,
            ["ascent_probability", "'half'", "LearningRateSchedule"],
        ),
        (
            {"policy": "random", "ascent_probability": lambda t, u: 0.5},
            TypeError,
            ["ascent_probability", "one argument"],
        ),
        (
            {"policy": "random", "policy_seed": -1},
            ValueError,
            ["policy_seed", "-1", "int >= 0"],
        ),
        (
            {"ascent_probability": 0.5},
            ValueError,
            ["ascent_probability", "policy='random'"],
        ),
        ({"policy_seed": 1}, ValueError, ["policy_seed", "policy='random'"]),
        (
            {"method": "looksam", "policy": "adaptive", "k": 3},
            ValueError,
            ["`k`", "policy='periodic'", "k=3"],
        ),
    ],
)
def test_invalid_descent_and_policy_options(kwargs, error, fragments):
    with pytest.raises(error) as info:
        SAMModel(_mlp(), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_descent_and_policy_defaults():
    """The papers' values, except WSAM's gamma: 0.9 (its code, with SGD)
    leaves AdamW unchanged (docs/hyperparameters.md)."""
    gsam = SAMModel(_mlp(), method="gsam").options
    assert (gsam.descent, gsam.gsam_alpha, gsam.gamma) == ("gsam", 0.6, None)
    wsam = SAMModel(_mlp(), method="wsam").options
    assert (wsam.descent, wsam.gamma, wsam.decoupled) == ("wsam", 0.97, True)
    sam = SAMModel(_mlp()).options
    assert (sam.descent, sam.policy, sam.policy_decay) == (
        "sam",
        "periodic",
        None,
    )
    ae = SAMModel(_mlp(), method="looksam", policy="adaptive").options
    assert (ae.policy_decay, ae.policy_threshold, ae.k, ae.alpha) == (
        0.9,
        0.0,
        None,
        0.7,
    )
    # Any point: GSAM on SAM-ON's mask, WSAM with nuSAM's geometry.
    assert SAMModel(_mlp(), method="samon", descent="gsam").options.gsam_alpha
    assert SAMModel(_mlp(), method="nusam", descent="wsam").options.gamma
    # A negative threshold (more ascents) and a schedule are thresholds.
    schedule = keras.optimizers.schedules.PolynomialDecay(1.0, 100, -1.0)
    for threshold in (-1, schedule):
        o = SAMModel(_mlp(), policy="adaptive", policy_threshold=threshold)
        assert o.options.policy_threshold == threshold


def test_decoupled_wsam_refuses_gradient_accumulation():
    sam = SAMModel(_mlp(), method="wsam")
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        sam.compile(
            optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2),
            loss="mse",
        )
    coupled = SAMModel(_mlp(), method="wsam", decoupled=False)
    coupled.compile(
        optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2),
        loss="mse",
    )


def test_real_options_are_stored_as_floats_and_callables_as_given():
    """An integer given for a real option is stored as a float (the option
    table's `converts`); a callable radius is kept as it is."""
    sam = SAMModel(_mlp(), "wsam", rho=1, gamma=0)
    assert type(sam.options.rho) is float and sam.options.rho == 1.0
    assert type(sam.options.gamma) is float
    assert sam.options.k is None  # where an option does not apply

    def radius(step):
        return 0.1

    assert SAMModel(_mlp(), rho=radius).options.rho is radius
    sam = SAMModel(_mlp(), "looksam", alpha=1, k=3)
    assert type(sam.options.alpha) is float and type(sam.options.k) is int


def _options_page_section(title: str) -> str:
    page = pathlib.Path(__file__).parents[1] / "docs" / "options.md"
    return page.read_text().split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_options_page_presets_table_is_presets():
    """docs/options.md's table of presets is `PRESETS`: each geometry and
    the options it sets."""
    rows = re.findall(
        r"^\| `\"(\w+)\"` \| (\w+) \| (.*) \|$",
        _options_page_section("Presets"),
        re.MULTILINE,
    )
    expected = {
        name: (
            preset.geometry,
            ", ".join(
                f"`{key}={value!r}`".replace("'", '"')
                for key, value in preset.values.items()
            ),
        )
        for name, preset in PRESETS.items()
    }
    assert {name: (g, values) for name, g, values in rows} == expected


def test_options_page_summarises_every_option_as_the_table_does():
    """docs/options.md's one-line list is each `Option.summary`, in the
    order of `OPTIONS`, each linked to the option's own section."""
    section = _options_page_section("The options")
    rows = re.findall(
        r"^\| \[`(\w+)`\]\(#(\w+)\) \| (.*) \|$", section, re.MULTILINE
    )
    assert all(name == anchor for name, anchor, _ in rows)
    summaries = [(name, text.replace("\\|", "|")) for name, _, text in rows]
    assert summaries[1:] == [(o.name, o.summary) for o in OPTIONS]
    assert all(f"\n### `{name}`\n" in section for name, _ in summaries)
