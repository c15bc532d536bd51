"""Smoke tests of `examples/`: every example trains a tiny model for a few
steps, in this process (`main([...])`), and prints its final line. The TPU
script's test is in test_distributed.py (it needs a fresh process)."""

import math
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from support.processes import environment

from examples import cifar10_vit, digits, hub_finetune, large_batch
from examples.schedules import WarmupLinearDecay, linear_scaling

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
TINY_VIT = ["--dim", "16", "--depth", "1", "--heads", "2"]
# Larger than the 1437 training and 360 test digits: one batch of each, so
# one shape and one XLA compilation (JAX retraces for a last, smaller batch).
WHOLE_SET = ["--batch-size", "2048"]
# The examples use only the public API (SAMModel, compile, fit), whose step
# every backend's own tests check; torch trains their tiny models in under a
# second each, TensorFlow and JAX in 4-14 s (a trace and a compilation each).
on_torch = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the example does not depend on the backend; torch runs it in "
    "under a second, TensorFlow and JAX in 4-14 s of the suite's budget",
)


def _check(logs: dict, out: str) -> None:
    """The returned test logs are sane and the last line of the output
    `out` is `final: accuracy=..., loss=...` with the same values."""
    assert math.isfinite(logs["loss"]), logs
    assert 0.0 <= logs["accuracy"] <= 1.0, logs
    last = out.strip().splitlines()[-1]
    assert last == (
        f"final: accuracy={logs['accuracy']:.4f}, loss={logs['loss']:.4f}"
    ), last


def _random_cifar(n: int, seed: int):
    """Arrays shaped and typed as `cifar10.load_data()` returns them."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, (n, 1), dtype=np.uint8),
    )


# ---- examples/digits.py ----------------------------------------------------


@on_torch
@pytest.mark.parametrize(
    "model, options",
    [
        ("vit", ["--method", "sam", "--rho", "0.1"]),
        ("mixer", ["--method", "looksam", "--k", "2", "--alpha", "0.3"]),
    ],
)
def test_digits(capsys, model, options):
    logs = digits.main(
        ["--model", model, *options, "--epochs", "1", *WHOLE_SET, *TINY_VIT]
    )
    _check(logs, capsys.readouterr().out)


# ---- examples/cifar10_vit.py -----------------------------------------------


def _no_download():
    raise AssertionError("cifar10.load_data() called outside main()")


@on_torch
def test_cifar10_train_takes_arrays(monkeypatch):
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", _no_download)
    x, y = _random_cifar(64, seed=0)
    x_test, y_test = _random_cifar(32, seed=1)
    logs = cifar10_vit.train(
        x,
        y,
        x_test,
        y_test,
        epochs=1,
        batch_size=32,
        dim=16,
        depth=1,
        heads=2,
        verbose=0,
    )
    assert math.isfinite(logs["loss"]), logs
    assert 0.0 <= logs["accuracy"] <= 1.0, logs


def test_cifar10_batches_augment_each_image():
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype="float32")
    y = np.arange(8)
    images, labels = next(iter(cifar10_vit.batches(x, y, 8, seed=0)))
    images, labels = np.asarray(images), np.asarray(labels)
    assert images.shape == x.shape
    assert sorted(labels) == list(range(8))  # shuffled, none lost
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Translated images have zero-filled borders, at different places.
    assert not any(np.array_equal(images[i], x[labels[i]]) for i in range(8))


def test_cifar10_main_loads_through_keras_datasets(monkeypatch, capsys):
    # main() reads CIFAR-10 through keras.datasets (here a stand-in of the
    # download) and hands the arrays to train(), tested above.
    calls = []

    def load_data():
        calls.append(1)
        return _random_cifar(64, seed=0), _random_cifar(32, seed=1)

    def train(x, y, x_test, y_test, **options):
        assert x.shape == (48, 32, 32, 3) and y.shape == (48, 1)
        assert x_test.shape == (32, 32, 32, 3)
        assert options["method"] == "looksam" and options["epochs"] == 3
        return {"accuracy": 0.25, "loss": 2.0}

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", load_data)
    monkeypatch.setattr(cifar10_vit, "train", train)
    logs = cifar10_vit.main(
        ["--method", "looksam", "--epochs", "3", "--limit", "48"]
    )
    assert calls == [1]
    out = capsys.readouterr().out
    assert "ViT on CIFAR-10 (48 training images) with looksam" in out
    _check(logs, out)


# ---- examples/large_batch.py -----------------------------------------------


def test_schedule_and_linear_scaling():
    schedule = WarmupLinearDecay(0.5, warmup_steps=2, total_steps=6)
    values = [float(schedule(step)) for step in range(8)]
    np.testing.assert_allclose(
        values, [0, 0.25, 0.5, 0.375, 0.25, 0.125, 0, 0], atol=1e-7
    )
    no_warmup = WarmupLinearDecay(0.5, warmup_steps=0, total_steps=4)
    values = [float(no_warmup(step)) for step in range(5)]
    np.testing.assert_allclose(values, [0.5, 0.375, 0.25, 0.125, 0], atol=1e-7)
    assert linear_scaling(1e-2, 512, 4096) == pytest.approx(1.25e-3)


def test_large_batch_mixup_mixes_labels():
    # RandAugment off here: tracing it costs seconds (10 s on JAX), and
    # test_large_batch runs it.
    x = np.random.default_rng(0).random((40, 8, 8, 1), dtype="float32")
    y = np.eye(10, dtype="float32")[np.arange(40) % 10]
    images, labels = next(
        iter(large_batch.augmented_batches(x, y, 16, randaugment_ops=0))
    )
    images, labels = np.asarray(images), np.asarray(labels)
    assert images.shape == (16, 8, 8, 1) and labels.shape == (16, 10)
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    # MixUp: soft labels (two classes with weights in (0, 1)).
    assert (labels.max(axis=1) < 1.0 - 1e-6).any()


@on_torch
def test_large_batch(capsys):
    logs = large_batch.main(
        # 360 test digits: 9 validation batches of 40, all the same shape;
        # one RandAugment call per batch.
        ["--batch-size", "40", "--randaugment-group", "40"]
        + ["--steps", "3", "--k", "2", *TINY_VIT]
    )
    out = capsys.readouterr().out
    assert "looklayersam (rho 0.1) with LAMB: batch 40" in out
    assert "0 warmup steps of 3" in out
    _check(logs, out)


# ---- examples/hub_finetune.py ----------------------------------------------


@on_torch
def test_hub_finetune(capsys):
    pytest.importorskip(
        "keras_hub", reason="keras-hub is not installed (the `hub` extra)"
    )
    logs = hub_finetune.main(
        ["--image-size", "16", "--num-layers", "1", "--num-heads", "2"]
        + ["--hidden-dim", "16", "--mlp-dim", "32", *WHOLE_SET]
        + ["--head-epochs", "1", "--epochs", "1"]
    )
    out = capsys.readouterr().out
    assert "Phase 1: the head alone" in out and "Phase 2" in out
    _check(logs, out)


def test_hub_finetune_without_keras_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import fails
    with pytest.raises(SystemExit, match="pip install keras-hub"):
        hub_finetune.main(["--epochs", "1"])


# ---- every example as a script ---------------------------------------------


def test_examples_run_as_scripts_from_anywhere(tmp_path):
    # `python examples/x.py --help` from another directory, with nothing on
    # PYTHONPATH: each script makes the repository importable itself (its
    # `examples` and its `keras_sam`).
    scripts = sorted(
        str(p)
        for p in EXAMPLES.glob("*.py")
        if p.name not in ("__init__.py", "data.py", "schedules.py")
    )
    code = (
        "import runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = [path, '--help']\n"
        "    try:\n"
        "        runpy.run_path(path, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (path, e.code)\n"
        "    print('ok', path)\n"
    )
    # The numpy backend: `--help` trains nothing, and it imports fastest.
    env = environment(backend="numpy")
    env.pop("PYTHONPATH")
    result = subprocess.run(
        [sys.executable, "-c", code, *scripts],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for script in scripts:
        assert f"ok {script}" in result.stdout
