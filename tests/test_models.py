"""The example ViT and MLP-Mixer: nuSAM's state against the paper's Table 1,
the persistent state of every method, and training on digits."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_sam import SAMModel
from keras_sam.demo.models import mlp_mixer, vit
from keras_sam.optimizers import LAMB


@pytest.mark.parametrize(
    "dim, heads, params, paper_state",
    [(384, 6, 22e6, 75_000), (768, 12, 86e6, 149_000)],
    ids=["ViT-S/16", "ViT-B/16"],
)
def test_nusam_state_within_table_1(dim, heads, params, paper_state):
    """nuSAM keeps one vector per weight matrix: at most the paper's count
    (Table 1 counts u and v with fused QKV; we keep u only)."""
    # Shapes only: the variables are created without their initial values
    # (drawing ViT-B/16's 86M cost 10 s, and nothing here reads them).
    with keras.StatelessScope(initialize_variables=False):
        model = vit(224, 16, 3, 1000, dim=dim, depth=12, heads=heads)
    assert abs(model.count_params() - params) / params < 0.02
    state = SAMModel(model, method="nusam").perturbation_state_size()
    assert 0 < state <= paper_state
    # ViT blocks: Q, K, V, output, MLP-in have fan-in dim (output: heads *
    # head_dim = dim), MLP-out has 4 * dim; plus the head. Conv stem: none.
    assert state == 12 * (5 * dim + 4 * dim) + dim


def _small_mlp():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(3),
        ]
    )


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"method": "sam"}, 0),
        ({"method": "asam"}, 0),
        ({"method": "samk"}, 0),
        ({"method": "fsam"}, 4 * 5 + 5 + 5 + 5 + 5 * 3 + 3),
        ({"method": "fsam", "perturb": "norm"}, 5 + 5),
        ({"method": "looksam"}, 4 * 5 + 5 + 5 + 5 + 5 * 3 + 3),
        (
            {"method": "looksam", "perturb": "norm"},
            4 * 5 + 5 + 5 + 5 + 5 * 3 + 3,
        ),
        ({"method": "nusam"}, 4 + 5),
        ({"method": "nusam", "reuse": "look"}, 4 + 5 + 53),
    ],
)
def test_perturbation_state_size(options, expected):
    assert (
        SAMModel(_small_mlp(), **options).perturbation_state_size() == expected
    )


def _digits_images(n=1024):
    x, y = load_digits(return_X_y=True)
    x = (x[:n] / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return x, y[:n]


@pytest.mark.parametrize(
    "make",
    [
        lambda: vit(8, 2, 1, 10, dim=32, depth=1, heads=2),
        pytest.param(
            lambda: mlp_mixer(8, 2, 1, 10, dim=32, depth=2),
            marks=pytest.mark.skipif(
                keras.backend.backend() != "torch",
                reason="the ViT's run covers the step on every backend; the "
                "Mixer (Dense and LayerNorm layers, as the golden tests' "
                "MLP) trains on torch, the fastest here (it cost 17 s of "
                "the TensorFlow and JAX runs' budget)",
            ),
        ),
    ],
    ids=["vit", "mixer"],
)
def test_looklayersam_with_lamb_trains_on_digits(make):
    # rho = 0.01: these tiny models are sharp at initialisation (sharpness
    # ~0.4 at rho = 0.05 for plain SAM, which then stalls too).
    keras.utils.set_random_seed(0)
    sam = SAMModel(make(), method="looklayersam", rho=0.01, k=2)
    sam.compile(
        optimizer=LAMB(2e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # 512 digits, 16 steps an epoch: the loss falls by 0.15-0.43 an epoch
    # (last/first epoch 0.48-0.71 over the backends and models).
    x, y = _digits_images(512)
    history = sam.fit(x, y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]


def test_nusam_trains_the_vit_on_digits():
    keras.utils.set_random_seed(0)
    sam = SAMModel(vit(8, 2, 1, 10, dim=32, depth=1, heads=2), method="nusam")
    sam.compile(
        optimizer=keras.optimizers.AdamW(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _digits_images()
    history = sam.fit(x, y, batch_size=32, epochs=3, verbose=0)
    # Last/first epoch 0.47-0.70 over the backends.
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
