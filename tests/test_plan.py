"""The pieces under the step, each on its own: the plan (`make_plan`), the
state's variables (`StateVariables`) and the micro-batches
(`micro_batches.split` / `join`)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_sam.src import micro_batches
from keras_sam.src.options import resolve_options
from keras_sam.src.plan import make_plan
from keras_sam.src.state import SAMState, StateVariables, new_variable


def _model():
    """Dense (kernel, bias), LayerNormalization (gamma, beta), Dense."""
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(2, use_bias=False),
        ]
    )


def _plan(method="sam", model=None, **options):
    model = model or _model()
    return make_plan(
        resolve_options(method, **options), model, model.trainable_variables
    )


def test_sam_perturbs_every_float_variable_and_ascends_every_step():
    plan = _plan()
    assert plan.gradient_indices == plan.perturbed_indices == (0, 1, 2, 3, 4)
    assert plan.ascends_every_step and not plan.keeps_gradient
    assert plan.clean_indices == (0, 1, 2, 3, 4)
    assert plan.geometry is not None and plan.matrices == ()


def test_samon_perturbs_the_normalization_layers_and_pass_one_skips_the_rest():
    plan = _plan("samon")
    assert plan.perturbed_indices == (2, 3)
    # Every step ascends with SAM's descent: pass 1 differentiates only
    # what the step reads; pass 2 gives the other variables' gradients.
    assert plan.clean_indices == (2, 3)
    assert plan.has_gradient((True,) * 5, (False,) * 5) == (
        False, False, True, True, False
    )  # fmt: skip
    # With reuse, some steps do not ascend: pass 1 differentiates all.
    assert _plan("samon", reuse="every_k", k=2).clean_indices == (0, 1, 2, 3, 4)


def test_nuclear_geometries_perturb_the_weight_matrices():
    plan = _plan("nusam")
    assert plan.perturbed_indices == (0, 4)
    assert [m.view.shape for m in plan.matrices] == [(3, 4), (4, 2)]
    assert plan.geometry is None and plan.pairs_in_pass_one
    assert not _plan("nusam", reuse="look").pairs_in_pass_one


@pytest.mark.parametrize(
    "method, keeps", [("looksam", True), ("gsam", True), ("samk", False)]
)
def test_the_clean_gradient_is_kept_where_read_after_pass_two(method, keeps):
    plan = _plan(method)
    assert plan.keeps_gradient is keeps
    assert not plan.ascends_every_step or method == "gsam"


class _Scaled(keras.layers.Layer):
    """A float weight, an integer one and a float8-style one that the
    optimizer overwrites with its "gradient"."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), name="w")
        # torch has no integer parameter: there it is not trainable.
        self.count = self.add_weight(
            shape=(),
            dtype="int32",
            name="count",
            trainable=keras.backend.backend() != "torch",
        )
        self.scale = self.add_weight(shape=(), name="scale")
        self.scale.overwrite_with_gradient = True

    def call(self, x):
        return x * self.w * self.scale


def test_integer_and_overwritten_variables_take_no_sam_gradient():
    layer = _Scaled()
    model = keras.Sequential([keras.Input((1,)), layer])
    variables = model.trainable_variables
    plan = make_plan(resolve_options("sam"), model, variables)
    assert [variables[i].name for i in plan.gradient_indices] == ["w"]


def test_a_plan_records_the_variables_it_was_made_for():
    model = _model()
    plan = _plan(model=model)
    assert plan.variable_ids == tuple(id(v) for v in model.trainable_variables)


def _state_variables():
    layer = keras.layers.Dense(1)
    layer.build((None, 1))
    state = SAMState(
        new_variable(layer, "iterations", ()),
        [new_variable(layer, "ema", (2,), np.array([1.0, 2.0]))],
        [],
        [],
        [],
        [],
    )
    return layer, StateVariables(state)


def test_state_variables_read_and_assign_as_a_structure():
    _, state = _state_variables()
    values = state.read()
    np.testing.assert_array_equal(ops.convert_to_numpy(values.ema[0]), [1, 2])
    state.assign(SAMState(3.0, [ops.ones((2,))], [], [], [], []))
    values = state.read()
    assert float(ops.convert_to_numpy(values.iterations)) == 3.0
    assert len(state.flat()) == 2


def test_state_variables_find_their_values_in_a_stateless_list():
    """The JAX trainer's non-trainable values: the state's entries are
    found by variable and replaced in place, the others kept."""
    layer, state = _state_variables()
    variables = [*layer.weights, *state.flat()]
    values = [f"value of {v.name}" for v in variables]
    found = state.from_values(variables, values)
    assert found.ema == ["value of ema"]
    replaced = state.into_values(
        variables, values, SAMState("it", ["new ema"], [], [], [], [])
    )
    assert replaced[-2:] == ["it", "new ema"]
    assert replaced[:-2] == values[:-2]


def test_split_gives_equal_contiguous_micro_batches():
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    parts = micro_batches.split((x, y, None), 3)
    assert len(parts) == 3
    np.testing.assert_array_equal(ops.convert_to_numpy(parts[1][0]), x[2:4])
    np.testing.assert_array_equal(ops.convert_to_numpy(parts[2][1]), y[4:])
    assert parts[0][2] is None


def test_split_names_the_option_of_an_indivisible_batch():
    with pytest.raises(ValueError, match="num_batch_splits=4 .* 6 examples"):
        micro_batches.split((np.zeros((6, 2)),), 4, "num_batch_splits")


def test_join_gives_what_one_pass_over_the_batch_would():
    """The mean loss, the predictions in order, a float state advanced by
    the mean change (BatchNorm's statistics), a metric counting every
    micro-batch, a non-float state as the first pass left it."""
    before_state = [np.float32(1.0), np.int32(7)]
    before_metrics = [np.float32(10.0)]
    passes = [
        (2.0, np.array([[1.0]]), [np.float32(3.0), np.int32(8)], [11.0]),
        (4.0, np.array([[2.0]]), [np.float32(5.0), np.int32(9)], [13.0]),
    ]
    loss, y_pred, state, metrics = micro_batches.join(
        before_state, before_metrics, passes
    )
    assert float(loss) == 3.0
    np.testing.assert_array_equal(ops.convert_to_numpy(y_pred), [[1.0], [2.0]])
    assert float(state[0]) == 4.0 and int(state[1]) == 8
    assert float(metrics[0]) == 14.0
