"""Each geometry on its own, against formulas written out in NumPy, and the
zero / non-finite guard (docs/semantics.md)."""

import numpy as np
import pytest
from keras import ops

from keras_sam.src.methods import geometry

RNG = np.random.default_rng(0)
SHAPES = [(3, 4), (4,), (2, 2, 3)]
D, G, W = (
    [RNG.normal(size=s).astype("float32") for s in SHAPES] for _ in range(3)
)
D_T, G_T, W_T = ([ops.convert_to_tensor(a) for a in xs] for xs in (D, G, W))
RHO = 0.3


def _np(tensors):
    return [ops.convert_to_numpy(t) for t in tensors]


def _flat(tensors):
    return np.concatenate([np.ravel(t) for t in tensors]).astype(np.float64)


def _close(actual, expected):
    for a, e in zip(_np(actual), expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)


def test_l2_is_rho_times_the_unit_direction():
    n = np.linalg.norm(_flat(D))
    _close(geometry.l2(D_T, G_T, W_T, RHO), [RHO * d / n for d in D])
    norm = np.linalg.norm(_flat(_np(geometry.l2(D_T, G_T, W_T, RHO))))
    np.testing.assert_allclose(norm, RHO, rtol=1e-6)


def test_linf_is_rho_times_the_sign():
    _close(
        geometry.l2(D_T, G_T, W_T, RHO, norm="linf"),
        [RHO * np.sign(d) for d in D],
    )


@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adaptive(layerwise, norm):
    eta = 0.05
    scaled = [True, False, True]  # the second is bias-like: T = 1
    T = []
    for w, s in zip(W, scaled):
        if not s:
            T.append(np.ones_like(w))
        elif layerwise:
            T.append(np.full_like(w, np.linalg.norm(w) + eta))
        else:
            T.append(np.abs(w) + eta)
    if norm == "l2":
        n = np.linalg.norm(_flat([t * d for t, d in zip(T, D)]))
        expected = [RHO * t * t * d / n for t, d in zip(T, D)]
    else:
        expected = [RHO * t * np.sign(d) for t, d in zip(T, D)]
    actual = geometry.adaptive(
        D_T,
        G_T,
        W_T,
        RHO,
        eta=eta,
        layerwise=layerwise,
        scaled=scaled,
        norm=norm,
    )
    _close(actual, expected)


def test_fisher():
    eta = 2.0
    T = [1.0 / np.sqrt(1.0 + eta * g**2) for g in G]
    n = np.linalg.norm(_flat([t * d for t, d in zip(T, D)]))
    _close(
        geometry.fisher(D_T, G_T, W_T, RHO, eta=eta),
        [RHO * t * t * d / n for t, d in zip(T, D)],
    )


def test_layer_scales_each_variable_by_its_weight_to_gradient_ratio():
    n = np.linalg.norm(_flat(D))
    expected = [
        RHO * np.linalg.norm(w) / np.linalg.norm(g) * d / n
        for d, g, w in zip(D, G, W)
    ]
    eps = geometry.layer(D_T, G_T, W_T, RHO)
    _close(eps, expected)
    # With d = g: ||eps_i|| = rho * ||w_i|| / ||g||, unbounded as g -> 0.
    eps = _np(geometry.layer(G_T, G_T, W_T, RHO))
    g_norm = np.linalg.norm(_flat(G))
    for e, w in zip(eps, W):
        np.testing.assert_allclose(
            np.linalg.norm(e), RHO * np.linalg.norm(w) / g_norm, rtol=1e-5
        )


def test_layer_scale_layer_moves_each_variable_by_rho_of_its_norm():
    eps = _np(geometry.layer(D_T, G_T, W_T, RHO, scale="layer"))
    for e, d, w in zip(eps, D, W):
        np.testing.assert_allclose(
            e, RHO * np.linalg.norm(w) * d / np.linalg.norm(d), rtol=1e-5
        )


def test_layer_scale_global_has_radius_rho_shared_by_weight_norms():
    eps = _np(geometry.layer(D_T, G_T, W_T, RHO, scale="global"))
    w_norm = np.linalg.norm(_flat(W))
    for e, d, w in zip(eps, D, W):
        expected = RHO * np.linalg.norm(w) / w_norm * d / np.linalg.norm(d)
        np.testing.assert_allclose(e, expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(_flat(eps)), RHO, rtol=1e-5)


GEOMETRIES = {
    "l2": lambda d, g: geometry.l2(d, g, W_T, RHO),
    "linf": lambda d, g: geometry.l2(d, g, W_T, RHO, norm="linf"),
    "adaptive": lambda d, g: geometry.adaptive(
        d, g, W_T, RHO, eta=0.01, layerwise=False, scaled=[True] * 3
    ),
    "fisher": lambda d, g: geometry.fisher(d, g, W_T, RHO, eta=1.0),
    "layer": lambda d, g: geometry.layer(d, g, W_T, RHO),
    "layer_layer": lambda d, g: geometry.layer(d, g, W_T, RHO, scale="layer"),
    "layer_global": lambda d, g: geometry.layer(d, g, W_T, RHO, scale="global"),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_zero_direction_gives_zero_perturbation(name):
    zeros = [ops.zeros_like(d) for d in D_T]
    eps = geometry.perturbation(
        lambda d, g, w, r: GEOMETRIES[name](d, g), zeros, zeros, W_T, RHO
    )
    for e in _np(eps):
        np.testing.assert_array_equal(e, 0.0)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_gives_zero_perturbation(name, bad):
    broken = [d.copy() for d in D]
    broken[1][2] = bad
    broken = [ops.convert_to_tensor(b) for b in broken]
    eps = geometry.perturbation(
        lambda d, g, w, r: GEOMETRIES[name](d, g), broken, broken, W_T, RHO
    )
    for e in _np(eps):
        np.testing.assert_array_equal(e, 0.0)
