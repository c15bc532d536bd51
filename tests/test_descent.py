"""The descent axis and AE-SAM's policy as pure functions, without a model:
`methods/descent.py`, `step.descend` and `step.ascent_policy` on small lists
of tensors against NumPy (as tests/test_step.py does for the other steps)."""

import numpy as np
import pytest
from keras import ops

from keras_sam.src import step
from keras_sam.src.methods import descent
from keras_sam.src.methods.geometry import l2
from keras_sam.src.options import resolve_options
from keras_sam.src.plan import StepPlan
from keras_sam.src.replicas import ONE_REPLICA, Replicas

# Three trainable variables, all in the SAM gradient, the first perturbed.
PLAN = StepPlan(
    variable_ids=(0, 1, 2),
    gradient_indices=(0, 1, 2),
    perturbed_indices=(0,),
    geometry=l2,
    matrices=(),
    ascends_every_step=False,
    looks_ahead=False,
    clean_indices=(0, 1, 2),
    keeps_gradient=True,
    pairs_in_pass_one=False,
)
VALUES = [np.ones(2), np.ones(3), np.ones((2, 2))]
G = [np.array([1.0, 2.0]), np.array([0.0, -1.0, 3.0]), np.full((2, 2), 0.5)]
G_S = [np.array([2.0, 1.0]), np.array([1.0, -1.0, 2.0]), np.full((2, 2), -1.0)]


def _t(arrays):
    return [ops.convert_to_tensor(a, "float32") for a in arrays]


def _flat(tensors):
    return np.concatenate([np.ravel(ops.convert_to_numpy(t)) for t in tensors])


def _np_flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _branch(gradients):
    zero = ops.zeros((), "float32")
    return step.Branch(_t(gradients), zero, [], [], True)


def _context(options, loss_scale=None, replicas=ONE_REPLICA):
    return step.Context(
        PLAN, options, _t(VALUES), loss_scale, replicas, 0, options.rho
    )


def _descend(options, gradients=G_S, ascent=True, loss_scale=None, **kw):
    ctx = _context(options, loss_scale, kw.get("replicas", ONE_REPLICA))
    grads = kw.get("grads", G)
    clean = step.gather(ctx, [_t(grads)], 0.0)
    return step.descend(
        ctx, clean, _branch(gradients), ops.convert_to_tensor(ascent)
    )


def test_gsam_subtracts_alpha_times_the_orthogonal_part_of_g():
    """GSAM Alg. 1: g = g_par + g_perp, g_par along g_s; the update is
    g_s - alpha g_perp, and g_perp is orthogonal to g_s globally."""
    g, g_s = _np_flat(G), _np_flat(G_S)
    g_perp = g - (g @ g_s) / (g_s @ g_s) * g_s
    assert abs(g_perp @ g_s) < 1e-12
    c = descent.gsam_coefficient(_t(G), _t(G_S))
    out = descent.gsam(_t(G), _t(G_S), c, 0.4)
    np.testing.assert_allclose(_flat(out), g_s - 0.4 * g_perp, rtol=1e-6)
    # alpha = 0 is SAM's update.
    np.testing.assert_allclose(
        _flat(descent.gsam(_t(G), _t(G_S), c, 0.0)), g_s, rtol=1e-6
    )


def test_gsam_coefficient_is_scale_invariant_and_zero_safe():
    c = descent.gsam_coefficient(_t(G), _t(G_S))
    shares = descent.gsam_coefficient(
        _t([x / 4 for x in G]), _t([x / 4 for x in G_S])
    )
    np.testing.assert_allclose(float(c), float(shares), rtol=1e-6)
    zeros = [np.zeros_like(x) for x in G_S]
    assert float(descent.gsam_coefficient(_t(G), _t(zeros))) == 0.0


@pytest.mark.parametrize("gamma, weight", [(0.0, 0.0), (0.5, 1.0), (0.9, 9.0)])
def test_wsam_weighs_the_sharpness_gamma_over_one_minus_gamma(gamma, weight):
    """WSAM: the gradient of L + gamma / (1 - gamma) (L(w + eps) - L(w));
    gamma = 0 is the base optimizer, gamma = 1/2 SAM."""
    assert descent.wsam_weight(gamma) == pytest.approx(weight)
    g, g_s = _np_flat(G), _np_flat(G_S)
    out = descent.wsam(_t(G), _t(G_S), gamma)
    np.testing.assert_allclose(
        _flat(out), g + weight * (g_s - g), rtol=1e-6, atol=1e-6
    )
    term = descent.wsam_sharpness(_t(G), _t(G_S), gamma)
    np.testing.assert_allclose(
        _flat(term), weight * (g_s - g), rtol=1e-6, atol=1e-6
    )


def test_descend_is_the_identity_for_sam():
    options = resolve_options("sam")
    branch = _branch(G_S)
    ctx = _context(options)
    clean = step.gather(ctx, [_t(G)], 0.0)
    out, term = step.descend(ctx, clean, branch, True)
    assert out is branch and term is None


def test_descend_keeps_a_reuse_step_and_rescales_under_loss_scaling():
    options = resolve_options("gsam", gsam_alpha=0.5)
    reused = [x * 3.0 for x in G]
    kept, term = _descend(options, reused, ascent=False)
    np.testing.assert_allclose(_flat(kept.gradients), _np_flat(reused))
    assert term is None
    # Pass 1 and pass 2 under a loss scale of 8: the update is scaled too.
    plain, _ = _descend(options)
    scaled, _ = _descend(
        options,
        [8.0 * x for x in G_S],
        grads=[8.0 * x for x in G],
        loss_scale=ops.convert_to_tensor(8.0),
    )
    np.testing.assert_allclose(
        _flat(scaled.gradients), 8.0 * _flat(plain.gradients), rtol=1e-6
    )


def test_decoupled_wsam_gives_the_optimizer_g_and_returns_the_term():
    options = resolve_options("wsam", gamma=0.75)
    out, term = _descend(options)
    np.testing.assert_allclose(_flat(out.gradients), _np_flat(G))
    np.testing.assert_allclose(
        _flat(term), 3.0 * (_np_flat(G_S) - _np_flat(G)), rtol=1e-6
    )
    # A reuse step: no term.
    _, term = _descend(options, ascent=False)
    assert not np.any(_flat(term))
    coupled, term = _descend(
        resolve_options("wsam", gamma=0.9, decoupled=False)
    )
    assert term is None
    np.testing.assert_allclose(
        _flat(coupled.gradients),
        _np_flat(G) + 9.0 * (_np_flat(G_S) - _np_flat(G)),
        rtol=1e-6,
    )


def test_gsam_on_two_replicas_decomposes_the_global_gradients():
    """Two replicas holding the same shares: the global g and g_s are twice
    the shares. `ascent="global"` all-reduces g_s for the coefficient (the
    one-device update's share); with `"per_replica"` each replica
    decomposes its own within its ascent (`own_gsam`: here the same update,
    without an all-reduce), and `descend` keeps it."""
    calls = []

    def all_reduce(tensors):
        calls.append(len(tensors))
        return [2.0 * t for t in tensors]

    replicas = Replicas(2, all_reduce)
    one, _ = _descend(resolve_options("gsam"))
    out, _ = _descend(resolve_options("gsam"), replicas=replicas)
    np.testing.assert_allclose(
        _flat(out.gradients), _flat(one.gradients), rtol=1e-6
    )
    # The clean total (gather) and g_s (descend).
    assert calls.count(len(G)) == 2

    options = resolve_options("gsam", ascent="per_replica")
    calls.clear()
    kept, term = _descend(options, replicas=replicas)
    np.testing.assert_array_equal(_flat(kept.gradients), _np_flat(G_S))
    assert term is None
    ctx = _context(options, replicas=replicas)
    clean = step.gather(ctx, [_t(G)], 0.0)
    own = step.own_gsam(ctx, clean.groups[0], _t(G_S))
    np.testing.assert_allclose(_flat(own), _flat(one.gradients), rtol=1e-6)
    assert calls.count(len(G)) == 0


def _policy(options, grads, statistics, t=0):
    clean = step.gather(_context(options), [_t(grads)], 0.0)
    ascent, new = step.ascent_policy(
        options,
        ops.convert_to_tensor(t),
        clean,
        _t(statistics),
        ops.convert_to_tensor(t >= 0),
    )
    return bool(ops.convert_to_numpy(ascent)), [float(s) for s in new]


def test_adaptive_policy_updates_the_statistics_then_tests_the_norm():
    """AE-SAM: mean and variance of ||g||^2 take this step's value (the
    mean first), then the step ascends iff ||g||^2 >= mean + c * std."""
    options = resolve_options(
        "sam", policy="adaptive", policy_decay=0.5, policy_threshold=1.0
    )
    s = float(_np_flat(G) @ _np_flat(G))  # 15
    ascent, (mean, variance) = _policy(options, G, [10.0, 4.0])
    assert mean == pytest.approx(0.5 * 10.0 + 0.5 * s)
    assert variance == pytest.approx(0.5 * 4.0 + 0.5 * (s - mean) ** 2)
    assert ascent == (s >= mean + np.sqrt(variance))
    assert ascent
    # A small gradient after large ones: no ascent.
    small = [0.1 * x for x in G]
    assert not _policy(options, small, [20.0, 1.0])[0]
    # Before start_step: no ascent, the statistics stay.
    ascent, new = _policy(options, G, [10.0, 4.0], t=-1)
    assert not ascent and new == [10.0, 4.0]


def test_periodic_policy_keeps_no_statistics():
    ascent, new = _policy(resolve_options("looksam", k=2), G, [], t=2)
    assert ascent and new == []
    assert not _policy(resolve_options("looksam", k=2), G, [], t=1)[0]


def test_the_threshold_may_be_a_schedule_of_the_sam_step():
    options = resolve_options(
        "sam",
        policy="adaptive",
        policy_decay=0.5,
        policy_threshold=lambda t: 10.0 - t,
    )
    # ||g||^2 = 15; mean 12.5, std 2.26 after the update.
    assert not _policy(options, G, [10.0, 4.0], t=0)[0]  # c = 10
    assert _policy(options, G, [10.0, 4.0], t=9)[0]  # c = 1
