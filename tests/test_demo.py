"""`make demo` (the README's first command) and the `keras-sam` command,
with tiny settings."""

import pathlib
import sys

import keras
import numpy as np
import pytest

from keras_sam.demo import cli
from keras_sam.demo import noisy_digits as demo
from keras_sam.demo.models import vit


def test_label_noise_replaces_a_fraction_by_wrong_labels():
    labels = np.arange(1000) % 10
    noisy = demo.with_label_noise(labels, 0.3, seed=1)
    assert np.sum(noisy != labels) == 300
    assert set(np.unique(noisy)) == set(range(10))
    np.testing.assert_array_equal(demo.with_label_noise(labels, 0.0), labels)


def _vit(keras_seed):
    keras.utils.set_random_seed(keras_seed)
    return vit(8, 2, 1, 10, dim=64, depth=2, heads=4, mlp_dim=128)


def test_initial_weights_follow_keras_laws_drawn_by_numpy():
    drawn_by_keras = [keras.ops.convert_to_numpy(w) for w in _vit(0).weights]
    model = _vit(0)
    demo.portable_initialization(model, seed=0)
    for keras_value, variable in zip(drawn_by_keras, model.weights):
        value = keras.ops.convert_to_numpy(variable)
        if np.all(keras_value == keras_value.flat[0]):  # zeros, ones
            np.testing.assert_array_equal(value, keras_value)
            continue
        assert not np.allclose(value, keras_value), variable.path
        # The same law: Glorot-uniform bounds and stds, position std 0.02.
        statistics = [np.std]
        if variable.name != "position":  # a normal sample's max is noisy
            statistics.append(lambda w: np.max(np.abs(w)))
        for statistic in statistics:
            np.testing.assert_allclose(
                statistic(value),
                statistic(keras_value),
                rtol=0.12,
                err_msg=variable.path,
            )


def test_initial_weights_and_batch_order_depend_on_the_seed_only():
    # Two models drawn by the backend's generator from different seeds.
    models = [_vit(1), _vit(2), _vit(1)]
    for model, seed in zip(models, (0, 0, 1)):
        demo.portable_initialization(model, seed)
    first, same, other = (
        [keras.ops.convert_to_numpy(w) for w in m.weights] for m in models
    )
    for a, b in zip(first, same):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(first, other))

    def epochs(seed):
        batches = demo.Batches(np.arange(10), np.arange(10) % 3, 4, seed)
        for _ in range(2):
            batches.on_epoch_begin()
            yield [batches[i] for i in range(len(batches))]

    (epoch1, epoch2), again = epochs(0), list(epochs(0))
    assert [len(x) for x, _ in epoch1] == [4, 4, 2]
    assert sorted(np.concatenate([x for x, _ in epoch1])) == list(range(10))
    for x, y in epoch1:
        np.testing.assert_array_equal(y, x % 3)
    assert str(epoch1) == str(again[0]) and str(epoch2) == str(again[1])
    assert str(epoch1) != str(epoch2)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the demo's own code (arguments, table, plot) does not depend on "
    "the backend, and `make demo` runs on JAX; SAMModel's training on every "
    "backend is what the rest of the suite tests (and the four models' traces "
    "and compilations cost seconds of the suite's budget on each backend)",
)
def test_demo_trains_prints_a_table_and_writes_the_plot(
    tmp_path, capsys, few_digits, monkeypatch
):
    # The command as it runs, on a tiny model: the demo's ViT, compiled for
    # 2 runs x 2 seeds, cost 30 s (test_frontier's quick sweep trains it).
    monkeypatch.setattr(demo, "make_model", _tiny_model)
    plot = tmp_path / "demo.png"
    argv = ["demo", "--methods", "looklayersam", "--epochs", "2"]
    cli.main([*argv, "--seeds", "2", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "30% of the training labels wrong" in out
    assert "Epoch 2/2" in out  # Keras' progress bars
    table = out[out.index("test acc") :].splitlines()[1:3]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    # Look-LayerSAM trains with LAMB: its time is relative to LAMB's alone.
    assert list(rows) == ["base_lamb", "looklayersam"]
    for optimizer, mean, pm, std, train, ratio, _, _ in rows.values():
        assert optimizer == "lamb" and pm == "±"
        assert 0.0 <= float(mean) <= 1.0 and float(std) >= 0.0
        assert 0.0 <= float(train) <= 1.0
        assert float(ratio) > 0
    # LookSAM keeps g_v: one value per parameter.
    parameters = demo.make_model().count_params()
    assert rows["base_lamb"][6:] == ["0", "0.00%"]
    assert rows["looklayersam"][6:] == [str(parameters), "100.00%"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def _tiny_model(kind="vit", seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(10),
        ]
    )


def test_flatness_measures_adamw_and_sam_and_writes_the_plot(
    tmp_path, capsys, few_digits, monkeypatch
):
    # The command as it runs, on a tiny model (the demo's models compile
    # for seconds per measure; test_frontier's quick sweep trains one).
    monkeypatch.setattr(demo, "make_model", _tiny_model)
    plot = tmp_path / "flatness.png"
    tiny = "--examples 64 --m 32 --steps 1 --iterations 2 --samples 2"
    cli.main(
        ["flatness", "--epochs", "2", *tiny.split(), "--points", "3"]
        + ["--plot", str(plot)]
    )
    out = capsys.readouterr().out
    assert "AdamW vs sam" in out and "Epoch 2/2" in out
    table = out[out.index("test accuracy") :].splitlines()
    rows = {line[:34].strip(): line[34:].split() for line in table[:6]}
    assert float(rows["top Hessian eigenvalue"][0]) > 0
    assert 0 <= float(rows["train accuracy (noisy labels)"][1]) <= 1
    assert rows["m-sharpness (m=32, rho=0.05)"][1] == "±"
    assert "SAM's model is flatter by:" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--methods", "bogus"], "unknown methods ['bogus']"),
        (["demo", "--epochs", "1"], "--epochs must be >= 2"),
        (["demo", "--noise", "0.95"], "--noise must be in [0, 0.9)"),
        (["demo", "--seeds", "0"], "--seeds must be >= 1"),
        (["flatness", "--method", "bogus"], "unknown method 'bogus'"),
        (["flatness", "--m", "100"], "--examples must be a multiple of --m"),
        (["flatness", "--points", "1"], "--points must be >= 2"),
        (["demo", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train"], "invalid choice: 'train'"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


def _help_entries(help_text: str) -> dict[str, str]:
    """Each option of an argparse help text (its lines joined), by its
    first flag."""
    entries, flag = {}, None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


@pytest.mark.parametrize(
    "command, shown",
    [
        ("demo", {"--epochs": "(default: 30)", "--noise": "(default: 0.3)"}),
        ("flatness", {"--m": "(default: 128)", "--seed": "(default: 0)"}),
    ],
)
def test_help_shows_every_default_and_the_backend(command, shown, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    entries = _help_entries(text)
    options = {flag for flag in entries if flag != "-h"}
    assert len(options) >= 6
    for flag in options:
        assert "(default: " in entries[flag], entries[flag]
    for flag, default in shown.items():
        assert entries[flag].endswith(default)
    words = " ".join(text.split())  # the epilog, unwrapped
    assert " ".join(cli.BACKEND_NOTE.split()) in words
    assert "KERAS_BACKEND" in words and "else TensorFlow" in words


def test_console_script_is_installed():
    # Beside the interpreter that runs the tests (a venv's bin/), calling
    # `cli.main` (whose arguments the tests above run in this process:
    # starting the script would spend seconds importing the backend).
    script = pathlib.Path(sys.executable).parent / "keras-sam"
    assert "from keras_sam.demo.cli import main" in script.read_text()
    assert cli.main.__module__ == "keras_sam.demo.cli"
