"""`make demo` (the README's first command) and the `keras-sam` command,
with tiny settings."""

import pathlib
import subprocess
import sys

import pytest

from keras_sam import cli, demo


@pytest.fixture
def few_digits(monkeypatch):
    """The demo on 192 training and 64 test digits: 3 steps an epoch."""
    (x, y), (x_test, y_test) = demo.load_digits()
    subset = ((x[:192], y[:192]), (x_test[:64], y_test[:64]))
    monkeypatch.setattr(demo, "load_digits", lambda: subset)


def test_demo_trains_prints_a_table_and_writes_the_plot(
    tmp_path, capsys, few_digits
):
    plot = tmp_path / "demo.png"
    argv = ["demo", "--methods", "looklayersam", "--epochs", "3"]
    cli.main([*argv, "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out  # Keras' progress bars
    table = out[out.index("test acc") :].splitlines()[1:3]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    # Look-LayerSAM trains with LAMB: its time is relative to LAMB's alone.
    assert list(rows) == ["base_lamb", "looklayersam"]
    for optimizer, accuracy, ratio, _, _ in rows.values():
        assert optimizer == "lamb"
        assert 0.0 <= float(accuracy) <= 1.0
        assert float(ratio) > 0
    # LookSAM keeps g_v: one value per parameter.
    parameters = demo.make_model().count_params()
    assert rows["base_lamb"][3:] == ["0", "0.00%"]
    assert rows["looklayersam"][3:] == [str(parameters), "100.00%"]
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--methods", "bogus"], "unknown methods ['bogus']"),
        (["demo", "--epochs", "1"], "--epochs must be >= 2"),
        (["demo", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train"], "invalid choice: 'train'"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    # Beside the interpreter that runs the tests (a venv's bin/).
    script = pathlib.Path(sys.executable).parent / "keras-sam"
    out = subprocess.run(
        [script, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out
