"""Shared test setup: quiet logs, the backend under test, fixtures."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("KERAS_BACKEND") == "jax":
    # The suite compiles hundreds of tiny XLA programs; LLVM's
    # optimizations cost a third of its time and buy nothing at this size.
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        ]
    ).strip()
warnings.filterwarnings("ignore", category=DeprecationWarning)

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _fresh_session():
    # Fresh layer names and global state per test; the full garbage
    # collection of `free_memory=True` costs ~0.8 s per test on TensorFlow.
    keras.backend.clear_session(free_memory=False)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module of tiny models: on a busy
    2-core machine torch's 2 spinning threads make such a step up to 25x
    slower."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The examples (examples/*.py, not part of the package) import in their tests.
import pathlib  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
