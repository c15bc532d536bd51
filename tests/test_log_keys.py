"""Every key `SAMModel.fit` logs is documented in one place: the list of
docs/quickstart.md's section "What `fit()` logs" (each bullet names its keys
before the first colon). A new key cannot go undocumented, nor a documented
key go stale."""

import contextlib
import io
import pathlib
import re

import keras
import numpy as np
import pytest
from support.helpers import FEW_STEPS_EAGERLY

from keras_sam import SAMModel

QUICKSTART = pathlib.Path(__file__).parent.parent / "docs" / "quickstart.md"
SECTION = "### What `fit()` logs"
METHODS = ("sam", "looksam", "gsam")


def documented_keys() -> set[str]:
    """The keys the bullets of the quickstart's section name before their
    first colon."""
    text = QUICKSTART.read_text()
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    bullets = re.findall(r"^- ([^:]*):", section, flags=re.M)
    return {key for b in bullets for key in re.findall(r"`(\w+)`", b)}


def _fit(method: str) -> tuple[list[str], str]:
    """One epoch of `method` with accuracy and validation data: the keys of
    `history.history` and what `fit` printed."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), np.arange(16) % 3
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    sam = SAMModel(model, method=method)
    sam.compile(
        optimizer="adamw",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=FEW_STEPS_EAGERLY,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        history = sam.fit(
            x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=2
        )
    return list(history.history), printed.getvalue()


@pytest.fixture(scope="module")
def logs() -> dict:
    return {method: _fit(method) for method in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_every_key_fit_prints_is_documented(method, logs):
    keys, printed = logs[method]
    assert re.findall(r"(\w+): ", printed) == keys
    assert set(keys) <= documented_keys(), printed


def test_every_documented_key_is_logged(logs):
    logged = {key for keys, _ in logs.values() for key in keys}
    assert documented_keys() == logged


def test_the_quickstart_shows_the_keys_fit_returns(logs):
    """The `history.history.keys()` the quickstart's example prints."""
    shown = re.search(r"# dict_keys\((\[.*\])\)", QUICKSTART.read_text())
    assert eval(shown.group(1)) == logs["sam"][0]
