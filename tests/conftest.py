"""Shared test setup: quiet logs, the backend under test, fixtures."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("KERAS_BACKEND") == "jax":
    # The suite compiles hundreds of tiny XLA programs, and compiling is
    # most of its time: LLVM's optimizations and XLA:CPU's fusion emitters
    # cost two thirds of each compilation and buy nothing at this size (the
    # numbers are the same: the golden tests pass unchanged). One thread per
    # pytest-xdist worker: the models are tiny, and two workers share two
    # cores.
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
            "--xla_cpu_use_fusion_emitters=false",
            "--xla_cpu_multi_thread_eigen=false",
        ]
    ).strip()
warnings.filterwarnings("ignore", category=DeprecationWarning)

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()
# One intra-op thread per pytest-xdist worker (two workers share two cores).
if BACKEND == "torch":
    import torch

    torch.set_num_threads(1)
elif BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)


@pytest.fixture
def few_digits(monkeypatch):
    """The demo on 192 training and 64 test digits: 3 steps of 64 an epoch,
    and whole batches everywhere (fit's 64, evaluate's and predict's 32),
    so each step function compiles once (the full split's last, smaller
    batches would compile each again)."""
    from keras_sam.demo import noisy_digits as demo

    (x, y), (x_test, y_test) = demo.load_digits()
    subset = ((x[:192], y[:192]), (x_test[:64], y_test[:64]))
    monkeypatch.setattr(demo, "load_digits", lambda: subset)


@pytest.fixture(autouse=True)
def _fresh_session():
    # Fresh layer names and global state per test; the full garbage
    # collection of `free_memory=True` costs ~0.8 s per test on TensorFlow.
    keras.backend.clear_session(free_memory=False)
    yield


# The examples (examples/*.py, not part of the package) import in their tests.
import pathlib  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


# Longest files first: pytest-xdist hands out whole files (`--dist
# loadfile`) in collection order, so a long file collected last would leave
# one worker running it alone at the end.
SLOW_FIRST = (
    "test_distributed.py",
    "test_golden.py",
    "test_precision.py",
    "test_multi_process_jax.py",
    "test_preemption.py",
    "test_multi_worker_tf.py",
    "test_examples.py",
    "test_saving.py",
    "test_models.py",
    "test_real_models.py",
    "test_demo.py",
    "test_fidelity.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)
