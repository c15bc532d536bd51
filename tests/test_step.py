"""The step's pure functions (`keras_sam/src/step.py`), without a model:
each one on small lists of tensors against NumPy."""

import dataclasses

import numpy as np
import pytest
from keras import ops

from keras_sam.src import step
from keras_sam.src.methods.geometry import l2
from keras_sam.src.options import resolve_options
from keras_sam.src.perturbation import Dense
from keras_sam.src.plan import StepPlan
from keras_sam.src.probes import SingularPairs
from keras_sam.src.replicas import ONE_REPLICA, Replicas
from keras_sam.src.state import SAMState

# Four trainable variables: 0 and 1 perturbed, 2 in the SAM gradient but not
# perturbed, 3 outside it (say a float8 scale).
PLAN = StepPlan(
    variable_ids=(0, 1, 2, 3),
    gradient_indices=(0, 1, 2),
    perturbed_indices=(0, 1),
    geometry=l2,
    matrices=(),
    ascends_every_step=False,
    looks_ahead=False,
    clean_indices=(0, 1, 2, 3),
    keeps_gradient=False,
    pairs_in_pass_one=False,
)
VALUES = [np.full((2,), 1.0), np.full((3,), 2.0), np.ones((2, 2)), np.ones(1)]
GRADS = [np.array([3.0, 4.0]), np.zeros(3), np.full((2, 2), 0.5), np.ones(1)]


def _t(arrays):
    return [
        None if a is None else ops.convert_to_tensor(a, "float32")
        for a in arrays
    ]


def _np(tensors):
    return [ops.convert_to_numpy(t) for t in tensors]


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _context(options, loss_scale=None, replicas=ONE_REPLICA, t=0):
    return step.Context(
        PLAN, options, _t(VALUES), loss_scale, replicas, t, options.rho
    )


def _gather(options, grads=GRADS, loss_scale=None, replicas=ONE_REPLICA):
    ctx = _context(options, loss_scale, replicas)
    return step.gather(ctx, [_t(grads)], 1.0)


def test_gather_unscales_and_fills_zeros():
    grads = [GRADS[0] * 8.0, None, GRADS[2] * 8.0, GRADS[3]]
    clean = _gather(resolve_options("sam"), grads, loss_scale=8.0)
    share = _np(clean.share)
    np.testing.assert_allclose(share[0], GRADS[0])
    np.testing.assert_array_equal(share[1], np.zeros(3))  # None: zeros
    np.testing.assert_allclose(share[2], GRADS[2])
    assert all(s.dtype == np.float32 for s in share)
    # SAM reads the global gradient of the perturbed variables only.
    assert clean.total is None
    np.testing.assert_allclose(_flat(_np(clean.perturbed)), _flat(share[:2]))
    assert clean.ascents == [clean.perturbed] and not clean.own
    assert bool(ops.convert_to_numpy(clean.finite))


def test_gather_reads_the_total_for_looksam_and_flags_non_finite():
    grads = list(GRADS)
    grads[2] = np.array([[np.nan, 0.0], [0.0, 0.0]])
    clean = _gather(resolve_options("looksam"), grads)
    assert len(clean.total) == 3
    assert not bool(ops.convert_to_numpy(clean.finite))


def test_gather_per_replica():
    """Two replicas that hold the same shares: the global gradient is their
    sum; the own gradient of a replica is its share times the count."""
    replicas = Replicas(2, lambda tensors: [2.0 * t for t in tensors])
    options = resolve_options("sam", ascent="per_replica")
    clean = _gather(options, replicas=replicas)
    assert clean.perturbed is None  # nothing reads the global one
    np.testing.assert_allclose(_np(clean.ascents[0])[0], 2.0 * GRADS[0])
    friendly = _gather(
        resolve_options("fsam", ascent="per_replica"), replicas=replicas
    )
    np.testing.assert_allclose(_np(friendly.perturbed)[0], 2.0 * GRADS[0])


def test_gather_micro_batches():
    """Two micro-batches: the share is their mean, each ascent its own
    gradient; GSAM keeps each one's share for its own decomposition."""
    half = [None if g is None else 0.5 * g for g in GRADS]
    groups = [_t(GRADS), _t(half)]
    options = resolve_options("gsam", batch_splits=2)
    clean = step.gather(_context(options), groups, 1.0)
    np.testing.assert_allclose(_np(clean.share)[0], 0.75 * GRADS[0])
    np.testing.assert_allclose(_np(clean.scaled[0]), 0.75 * GRADS[0])
    assert clean.own and len(clean.ascents) == 2
    np.testing.assert_allclose(_np(clean.ascents[0])[0], GRADS[0])
    np.testing.assert_allclose(_np(clean.ascents[1])[0], 0.5 * GRADS[0])
    np.testing.assert_allclose(_np(clean.groups[1][0]), 0.5 * GRADS[0])
    assert clean.total is None  # GSAM decomposes each micro-batch's own


def test_gradient_ema_and_direction():
    options = resolve_options("fsam", ema_decay=0.5, sigma=0.8)
    clean = _gather(options)
    old = _t([np.ones(2), np.ones(3)])
    ema = step.gradient_ema(options, old, clean, ops.convert_to_tensor(True))
    expected = [0.5 * np.ones(2) + 0.5 * GRADS[0], 0.5 * np.ones(3)]
    np.testing.assert_allclose(_flat(_np(ema)), _flat(expected))
    d = step.direction(options, clean.ascents[0], ema)
    np.testing.assert_allclose(
        _flat(_np(d)), _flat([GRADS[0], np.zeros(3)]) - 0.8 * _flat(expected)
    )
    # Before start_step the EMA stays; without friendly there is none.
    kept = step.gradient_ema(options, old, clean, ops.convert_to_tensor(False))
    np.testing.assert_array_equal(_flat(_np(kept)), np.ones(5))
    assert step.gradient_ema(resolve_options("sam"), [], clean, True) == []


def test_lookahead_is_msams_point_along_minus_the_momentum():
    """MSAM's pass 1 runs at `w - rho m / ||m||` over the perturbed
    variables: at `w` while `m` is zero (the first step) and before the
    first SAM step (`t < 0`); no look-ahead for the other methods."""
    options = resolve_options("msam", rho=0.5)
    plan = dataclasses.replace(PLAN, looks_ahead=True)
    m = [np.array([3.0, 4.0]), np.zeros(3)]

    def at(t, ema):
        ctx = _context(options, t=ops.convert_to_tensor(t))._replace(plan=plan)
        state = SAMState(0, _t(ema), [], [], [], [])
        return _flat(_np(step.lookahead(ctx, state).values(_t(VALUES))))

    expected = _flat(VALUES).copy()
    expected[:2] -= 0.5 * np.array([0.6, 0.8])
    np.testing.assert_allclose(at(0, m), expected, rtol=1e-6)
    np.testing.assert_array_equal(at(-1, m), _flat(VALUES))  # before start
    zero = [np.zeros(2), np.zeros(3)]
    np.testing.assert_array_equal(at(0, zero), _flat(VALUES))
    state = SAMState(0, [], [], [], [], [])
    assert step.lookahead(_context(resolve_options("sam")), state) is None


def test_perturb_is_the_geometry_on_the_perturbed_variables():
    options = resolve_options("sam", rho=0.5)
    clean = _gather(options)
    perturbation, u = step.perturb(
        _context(options), clean.ascents[0], clean.ascents[0], []
    )
    assert isinstance(perturbation, Dense) and u == []
    shifted = _np(perturbation.values(_t(VALUES)))
    g = _flat([GRADS[0], np.zeros(3)])
    np.testing.assert_allclose(
        _flat(shifted[:2]), _flat(VALUES[:2]) + 0.5 * g / np.linalg.norm(g)
    )
    np.testing.assert_array_equal(shifted[2], VALUES[2])  # not perturbed


def test_after_ascent_stores_lookSAM_g_v():
    options = resolve_options("looksam", reuse_scale="stored")
    clean = _gather(options)
    g_s = [np.array([1.0, 1.0]), np.ones(3), np.zeros((2, 2)), np.ones(1)]
    two = step.PassTwo(1.25, _t(g_s), None)
    branch = step.after_ascent(_context(options), clean, two, [], [])
    np.testing.assert_allclose(float(branch.sharpness), 0.25)
    g, gs = _flat(GRADS[:3]), _flat(g_s[:3])
    np.testing.assert_allclose(
        _flat(_np(branch.g_v)), gs - (g @ gs) / (g @ g) * g, rtol=1e-6
    )
    assert _np(branch.gradients)[0].tolist() == [1.0, 1.0]
    assert bool(ops.convert_to_numpy(branch.finite))


def test_reuse_is_the_clean_gradient_or_lookSAM_reuse():
    sam_k = resolve_options("samk")
    state = SAMState(0, [], [], [], [], [])
    branch = step.reuse(_context(sam_k), _gather(sam_k), state, True)
    np.testing.assert_array_equal(
        _flat(_np(branch.gradients)), _flat(GRADS[:3])
    )
    look = resolve_options("looksam", reuse_scale="stored", alpha=0.5)
    g_v = [np.ones(2), np.zeros(3), np.ones((2, 2))]
    state = SAMState(0, [], _t(g_v), [], [], [])
    scaled = [2.0 * g for g in GRADS]  # pass 1 under a loss scale of 2
    branch = step.reuse(
        _context(look, loss_scale=2.0), _gather(look, scaled, 2.0), state, True
    )
    # g + alpha * g_v, scaled again for the optimizer.
    expected = 2.0 * (_flat(GRADS[:3]) + 0.5 * _flat(g_v))
    np.testing.assert_allclose(_flat(_np(branch.gradients)), expected)


def test_commit_keeps_the_old_state_unless_ok():
    old = SAMState(ops.convert_to_tensor(3), _t([np.zeros(2)]), [], [], [], [])
    new = SAMState(ops.convert_to_tensor(4), _t([np.ones(2)]), [], [], [], [])
    kept = step.commit(old, new, ops.convert_to_tensor(False))
    assert int(ops.convert_to_numpy(kept.iterations)) == 3
    moved = step.commit(old, new, ops.convert_to_tensor(True))
    assert int(ops.convert_to_numpy(moved.iterations)) == 4
    np.testing.assert_array_equal(_np(moved.ema)[0], np.ones(2))


def test_merge_lays_out_the_update_for_the_optimizer():
    clean = _gather(resolve_options("sam"), [GRADS[0], None, *GRADS[2:]])
    assert clean.present == (True, False, True, True)
    update = ["a", "b", "c"]
    # A variable without pass-1 gradient keeps None; one outside the SAM
    # gradient keeps its pass-1 gradient.
    merged = step.merge(PLAN, clean, update, PLAN.has_gradient(clean.present))
    assert merged[:3] == ["a", None, "c"]
    np.testing.assert_array_equal(ops.convert_to_numpy(merged[3]), GRADS[3])


def test_pass_two_says_which_variables_pass_one_left_have_a_gradient():
    """Variables pass 1 did not differentiate (SAM-ON's unperturbed ones
    when every step ascends): pass 2 decides; pass 1 for the others."""
    plan = dataclasses.replace(PLAN, clean_indices=(0, 1, 3))
    one = (True, False, False, True)
    assert plan.has_gradient(one, (True, True, True, True)) == (
        True, False, True, True
    )  # fmt: skip
    assert plan.has_gradient(one, (True, True, False, True))[2] is False
    assert PLAN.has_gradient(one) == one


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_pass_two_is_flagged(bad):
    options = resolve_options("sam")
    g_s = [np.array([bad, 0.0]), np.ones(3), np.ones((2, 2)), np.ones(1)]
    two = step.PassTwo(2.0, _t(g_s), None)
    branch = step.after_ascent(_context(options), _gather(options), two, [], [])
    assert not bool(ops.convert_to_numpy(branch.finite))


@pytest.mark.parametrize("ascent", [True, False])
def test_global_g_v_sums_the_replicas_shares_after_an_ascent(ascent):
    options = resolve_options("looksam")
    replicas = Replicas(2, lambda tensors: [2.0 * t for t in tensors])
    share, old = _t([np.array([1.0, -2.0])]), _t([np.array([5.0, 6.0])])
    g_v = step.global_g_v(
        _context(options, replicas=replicas), share, old, ascent
    )
    expected = [2.0, -4.0] if ascent else [5.0, 6.0]
    np.testing.assert_allclose(ops.convert_to_numpy(g_v[0]), expected)
    # One replica: the branch's g_v as it is.
    (alone,) = step.global_g_v(_context(options), share, old, ascent)
    np.testing.assert_allclose(ops.convert_to_numpy(alone), [1.0, -2.0])


def _pairs(sigma=(3.0, 4.0), called=(True, False)):
    """Singular pairs of two 2 x 2 weight matrices (variables 0 and 1)."""
    u = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    v = [np.array([0.6, 0.8]), np.array([1.0, 0.0])]
    return SingularPairs(_t(u), _t(v), _t(list(sigma)), called)


def _gather_pairs(pairs: SingularPairs):
    grads = _t([None, None, None, GRADS[3]])
    return step.gather(_context(resolve_options("nusam")), [grads], 1.0, pairs)


def test_gather_with_singular_pairs_reads_no_gradient():
    """When pass 1 gave nuSAM's singular pairs instead of the weight
    matrices' gradients, the step reads no gradient of them; a matrix has a
    gradient if its layer ran, and the variables outside the SAM gradient
    keep pass 1's."""
    clean = _gather_pairs(_pairs())
    assert clean.share == [] and clean.perturbed is None
    assert clean.present == (True, False, False, True)
    assert list(clean.others) == [3]
    assert bool(ops.convert_to_numpy(clean.finite))
    clean = _gather_pairs(_pairs(sigma=(np.nan, 4.0)))
    assert not bool(ops.convert_to_numpy(clean.finite))


@pytest.mark.parametrize("method", ["nusam", "nusam_norm"])
def test_perturbation_from_singular_pairs(method):
    """nuSAM: `eps_i = rho u_i v_i^T`; nuSAM-Norm: `rho sigma_i /
    ||sigma|| u_i v_i^T` (sigma = (3, 4): scales 0.6 rho and 0.8 rho)."""
    pairs = _pairs()
    clean = _gather_pairs(pairs)
    state_u = _t([np.ones(2), np.ones(2)])
    ctx = _context(resolve_options(method, rho=0.5))
    perturbation, u = step.perturb_from_pairs(ctx, clean, state_u)
    expected = [0.5, 0.5] if method == "nusam" else [0.3, 0.4]
    np.testing.assert_allclose(_np(perturbation.scales), expected, rtol=1e-6)
    np.testing.assert_allclose(_flat(_np(u)), _flat(_np(pairs.u)))
    np.testing.assert_allclose(_flat(_np(perturbation.v)), _flat(_np(pairs.v)))
