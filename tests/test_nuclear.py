"""nuSAM's weight matrices, power iteration and state, including attention."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops
from support import reference_attention as attention
from support.helpers import LR, compile_sgd
from support.reference import Config, Reference

from keras_sam import SAMModel
from keras_sam.src.analysis import autodiff
from keras_sam.src.layers.matrices import MatrixView, weight_matrices
from keras_sam.src.methods import nuclear
from keras_sam.src.probes import Probes, Run


def _attention_model(params):
    inputs = keras.Input((attention.TOKENS, attention.DIM))
    h = keras.layers.MultiHeadAttention(attention.HEADS, attention.KEY_DIM)(
        inputs, inputs
    )
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(attention.CLASSES)(h))
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    assert shapes == list(attention.SHAPES.values())
    model.set_weights(
        [np.asarray(params[n], "float32") for n in attention.SHAPES]
    )
    return model


@pytest.mark.parametrize("method", ["nusam", "nusam_norm"])
def test_attention_model_matches_reference(method):
    """Q/K/V and output projections are each one (fan_in, fan_out) matrix."""
    params = attention.init_params()
    x, y = attention.make_batches()
    x = x.astype("float32")
    model = _attention_model(params)
    sam = SAMModel(model, method=method, rho=0.2)
    compile_sgd(sam)
    ref = Reference(
        Config(
            geometry=method.replace("nusam", "nuclear"),
            rho=0.2,
            perturbed=tuple(attention.SHAPES),
        ),
        params,
        LR,
        loss_fn=attention.loss_and_grad,
        matrices=attention.MATRICES,
    )
    for step in range(len(x)):
        sam.reset_metrics()
        logs = sam.train_on_batch(x[step], y[step], return_dict=True)
        ref.step(x[step], y[step])
        for v, name in zip(model.trainable_variables, attention.SHAPES):
            np.testing.assert_allclose(
                ops.convert_to_numpy(v.value),
                ref.params()[name],
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"step {step} {name}",
            )
        np.testing.assert_allclose(
            logs["sharpness"], ref.last_sharpness, rtol=1e-3, atol=1e-6
        )


def test_weight_matrices_of_attention_and_dense():
    inputs = keras.Input((5, 4))
    mha = keras.layers.MultiHeadAttention(2, 3)
    h = mha(inputs, inputs)
    conv = keras.layers.Conv1D(2, 3)
    h = conv(h)
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None,))
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(keras.layers.LayerNormalization()(h)))
    matrices = weight_matrices(model)
    by_path = {
        v.path: matrices[id(v)].view if id(v) in matrices else None
        for v in model.trainable_variables
    }
    q = by_path[mha._query_dense.kernel.path]
    assert (q.row_axes, q.col_axes, q.rows, q.cols) == ((0,), (1, 2), 4, 6)
    o = by_path[mha._output_dense.kernel.path]
    assert (o.row_axes, o.col_axes, o.rows, o.cols) == ((0, 1), (2,), 6, 4)
    assert by_path[dense.kernel.path] == MatrixView((2, 3), (0,), (1,))
    # Convolutions, biases and normalization parameters are not matrices.
    assert by_path[conv.kernel.path] is None
    assert sum(view is not None for view in by_path.values()) == 5


LAYERS = {
    "dense": lambda: keras.layers.Dense(5, activation="tanh"),
    "dense_3d_input": lambda: keras.layers.Dense(5),
    # Attention's projections: rows lead, and rows after a batch axis.
    "query": lambda: keras.layers.EinsumDense(
        "abc,cde->abde", (None, 2, 3), bias_axes="de"
    ),
    "output": lambda: keras.layers.EinsumDense(
        "abcd,cde->abe", (None, 4), bias_axes="e"
    ),
    # Rows that are not the kernel's leading axes.
    "non_leading_rows": lambda: keras.layers.EinsumDense(
        "ab,cb->ac", (3,), bias_axes="c", activation="relu"
    ),
    "ellipsis": lambda: keras.layers.EinsumDense(
        "...b,bc->...c", (3,), bias_axes="c"
    ),
}
INPUTS = {
    "dense": (6, 4),
    "dense_3d_input": (2, 3, 4),
    "query": (2, 3, 4),
    "output": (2, 3, 2, 3),
    "non_leading_rows": (2, 4),
    "ellipsis": (2, 3, 4),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_factorised_forward_equals_the_layer_at_w_plus_eps(name, dtype):
    """nuSAM's pass 2 runs each weight matrix's layer as
    `x W + s (x u) v^T` (bias and activation after): the layer's own output
    at `W + s u v^T`, without that tensor (in float16 too: TensorFlow's
    float16 einsum with an ellipsis is wrong, so none is used)."""
    if (name, dtype, BACKEND) == ("ellipsis", "float16", "tensorflow"):
        pytest.skip(
            "TensorFlow's float16 einsum with an ellipsis is wrong in the "
            "layer itself (EinsumDense's own x W), the reference here"
        )
    rng = np.random.default_rng(0)
    x = rng.normal(size=INPUTS[name]).astype("float32")
    layer = LAYERS[name]()
    layer.dtype_policy = keras.DTypePolicy(dtype)
    layer(x)
    (matrix,) = weight_matrices(layer).values()
    view = matrix.view
    u = rng.normal(size=view.rows).astype("float32")
    v = rng.normal(size=view.cols).astype("float32")
    factorised = matrix.perturbed_call(
        ops.convert_to_tensor(u), ops.convert_to_tensor(v), 0.3
    )(ops.convert_to_tensor(x, dtype))
    kernel = ops.convert_to_numpy(layer.kernel)
    eps = ops.convert_to_numpy(view.from_matrix(0.3 * np.outer(u, v)))
    layer.kernel.assign(kernel + eps)
    expected = layer(x)
    tolerance = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(
        ops.convert_to_numpy(factorised).astype("float32"),
        ops.convert_to_numpy(expected).astype("float32"),
        rtol=tolerance,
        atol=tolerance,
    )
    assert matrix.factorised


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_factorised_gradients_equal_the_gradients_at_w_plus_eps(name):
    """The gradients of the factorised forward with respect to the input
    and `W` are those of the layer at `W + s u v^T` (on torch, the
    flattened layers run a fused autograd function of their own)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=INPUTS[name]).astype("float32")
    layer = LAYERS[name]()
    layer(x)
    (matrix,) = weight_matrices(layer).values()
    u = rng.normal(size=matrix.view.rows).astype("float32")
    v = rng.normal(size=matrix.view.cols).astype("float32")
    weights = ops.convert_to_tensor(
        rng.normal(size=layer(x).shape).astype("float32")
    )
    call = matrix.perturbed_call(
        ops.convert_to_tensor(u), ops.convert_to_tensor(v), 0.3
    )
    eps = matrix.view.from_matrix(0.3 * np.outer(u, v))

    def loss(forward):
        def loss_fn(values, context):
            inputs, kernel = values
            with keras.StatelessScope(state_mapping=[(layer.kernel, kernel)]):
                return ops.sum(forward(inputs) * weights)

        return autodiff.compile_loss(loss_fn).value_and_gradient

    kernel = ops.convert_to_numpy(layer.kernel)
    inputs = ops.convert_to_tensor(x)
    _, factorised = loss(call)([inputs, ops.convert_to_tensor(kernel)], None)
    perturbed = ops.convert_to_tensor(kernel + ops.convert_to_numpy(eps))
    _, expected = loss(layer.call)([inputs, perturbed], None)
    for got, want in zip(factorised, expected):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got),
            ops.convert_to_numpy(want),
            rtol=1e-5,
            atol=1e-5,
        )


def _alg2(a: np.ndarray, u: np.ndarray, iterations: int):
    """Alg. 2 of the nuSAM paper in NumPy (float64), and `u^T A v`."""
    for _ in range(iterations):
        v = a.T @ u
        v = v / (np.linalg.norm(v) + 1e-12)
        u = a @ v
        u = u / (np.linalg.norm(u) + 1e-12)
    return u, v, u @ a @ v


def test_power_iteration_on_an_outer_sum_is_alg2_on_the_formed_matrix():
    """`A = x^T dy` is never formed: `A v = x^T (dy v)` and
    `A^T u = dy^T (x u)`."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 6)).astype("float32")
    dy = rng.normal(size=(7, 4)).astype("float32")
    u0 = nuclear.initial_vectors([6])[0]
    u, v, sigma = nuclear.outer_sum_pair(
        ops.convert_to_tensor(x), ops.convert_to_tensor(dy), u0, 3
    )
    want = _alg2(x.T.astype("float64") @ dy, u0.astype("float64"), 3)
    for got, expected in zip((u, v, sigma), want):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-6
        )


FLAT = sorted(set(LAYERS) - {"non_leading_rows"})


def test_layers_are_flat_products_unless_their_rows_trail():
    for name, make in LAYERS.items():
        layer = make()
        layer(np.zeros(INPUTS[name], "float32"))
        (matrix,) = weight_matrices(layer).values()
        assert matrix.flat is (name in FLAT), name


@pytest.mark.parametrize("name", FLAT)
def test_probed_layer_gives_alg2_of_its_kernel_gradient(name):
    """In pass 1 a probed layer's output and its gradients with respect to
    the input and the kernel are the layer's own, and its probe's
    gradient is `(u, v, sigma)` of Alg. 2 on the kernel's gradient (as a
    matrix), warm-started from the probe's first entries."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=INPUTS[name]).astype("float32")
    layer = LAYERS[name]()
    layer(x)
    (matrix,) = weight_matrices(layer).values()
    rows, cols = matrix.view.rows, matrix.view.cols
    u0 = nuclear.initial_vectors([rows])[0]
    probe = np.concatenate([u0, np.zeros(cols + 1, "float32")])
    weights = ops.convert_to_tensor(
        rng.normal(size=layer(x).shape).astype("float32")
    )
    # A run whose layer ran twice: torch computes the kernel's gradient.
    run = Run([2])
    call = matrix.probed_call(ops.convert_to_tensor(probe), 2, run)

    def loss(probed: bool):
        def loss_fn(values, context):
            inputs, kernel, probe_value = values
            forward = layer.call
            if probed:
                forward = matrix.probed_call(probe_value, 2, run)
            with keras.StatelessScope(state_mapping=[(layer.kernel, kernel)]):
                return ops.sum(forward(inputs) * weights)

        return autodiff.compile_loss(loss_fn).value_and_gradient

    values = [ops.convert_to_tensor(v) for v in (x, layer.kernel, probe)]
    np.testing.assert_allclose(
        ops.convert_to_numpy(call(values[0])),
        ops.convert_to_numpy(layer(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    _, probed = loss(True)(values, None)
    _, plain = loss(False)(values, None)
    for got, want in zip(probed[:2], plain[:2]):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(want), 1e-5, 1e-6
        )
    a = ops.convert_to_numpy(matrix.view.to_matrix(plain[1])).astype("float64")
    u, v, sigma = _alg2(a, u0.astype("float64"), 2)
    np.testing.assert_allclose(
        ops.convert_to_numpy(probed[2]),
        np.concatenate([u, v, [sigma]]),
        rtol=1e-4,
        atol=1e-6,
    )


def test_a_layer_called_twice_keeps_its_kernel_gradient_in_pass_one(
    monkeypatch,
):
    """A shared layer's gradient is the sum over its calls, which per-call
    power iterations cannot give: pass 1 then differentiates the kernels,
    and the step is nuSAM's on the gradient."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    trained = []
    for probed in (True, False):
        keras.utils.set_random_seed(0)
        shared = keras.layers.Dense(4, activation="tanh")
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3)(shared(shared(inputs)))
        sam = SAMModel(keras.Model(inputs, outputs), method="nusam_norm")
        compile_sgd(sam)
        pairs = []
        original = Probes.pairs

        def spied(self, *args, pairs=pairs, original=original):
            pairs.append(original(self, *args))
            return pairs[-1]

        monkeypatch.setattr(Probes, "pairs", spied)
        if not probed:
            monkeypatch.setattr(SAMModel, "_probes", lambda self, *a: None)
        sam.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        # Probed, the layer ran twice: no pairs, gradients instead.
        assert pairs == ([None] * len(pairs) if probed else [])
        assert bool(pairs) is probed
        trained.append([ops.convert_to_numpy(w) for w in sam.get_weights()])
        monkeypatch.undo()
    for got, want in zip(*trained):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_layers_that_cannot_run_factorised_are_perturbed_as_values():
    """A kernel regularizer must see `W + eps` itself; a subclass with its
    own `call` or a quantized layer would not run the stock forward."""

    class Scaled(keras.layers.Dense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    layers = {
        "stock": keras.layers.Dense(3),
        "regularized": keras.layers.Dense(
            3, kernel_regularizer=keras.regularizers.L2(0.1)
        ),
        "own_call": Scaled(3),
    }
    for layer in layers.values():
        layer.build((None, 4))
    factorised = {
        name: next(iter(weight_matrices(layer).values())).factorised
        for name, layer in layers.items()
    }
    assert factorised == {
        "stock": True,
        "regularized": False,
        "own_call": False,
    }


def test_matrix_view_round_trip_with_non_leading_rows():
    view = MatrixView((2, 3, 4), (1,), (0, 2))  # rows: the middle axis
    kernel = np.arange(24, dtype="float32").reshape(2, 3, 4)
    matrix = ops.convert_to_numpy(view.to_matrix(ops.convert_to_tensor(kernel)))
    np.testing.assert_array_equal(
        matrix, kernel.transpose(1, 0, 2).reshape(3, 8)
    )
    back = ops.convert_to_numpy(view.from_matrix(ops.convert_to_tensor(matrix)))
    np.testing.assert_array_equal(back, kernel)


def test_initial_vectors_are_fixed_random_unit_vectors():
    first, second = nuclear.initial_vectors([5, 3])
    rng = np.random.default_rng(0)
    expected = rng.standard_normal(5)
    np.testing.assert_allclose(first, expected / np.linalg.norm(expected), 1e-6)
    assert abs(np.linalg.norm(second) - 1) < 1e-6
    assert np.std(first) > 0.1  # not a constant vector


def test_power_iteration_converges_to_the_top_singular_pair():
    a = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    u0 = nuclear.initial_vectors([6])[0]
    u, v, _ = nuclear.top_singular_pair(
        ops.convert_to_tensor(a), ops.convert_to_tensor(u0), 100
    )
    U, S, Vt = np.linalg.svd(a)
    outer = np.outer(ops.convert_to_numpy(u), ops.convert_to_numpy(v))
    np.testing.assert_allclose(outer, np.outer(U[:, 0], Vt[0]), atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_direction_gives_zero_scale_and_keeps_u(bad):
    a = np.ones((3, 2), "float32")
    a[1, 1] = bad
    u0 = nuclear.initial_vectors([3])[0]
    us, vs, scales = nuclear.rank_one(
        [ops.convert_to_tensor(a)], [ops.convert_to_tensor(u0)], 0.1, 1, False
    )
    assert float(ops.convert_to_numpy(scales[0])) == 0.0
    np.testing.assert_array_equal(ops.convert_to_numpy(us[0]), u0)
    np.testing.assert_array_equal(ops.convert_to_numpy(vs[0]), 0.0)


def test_zero_direction_gives_zero_perturbation():
    zeros = ops.zeros((3, 2))
    u0 = ops.convert_to_tensor(nuclear.initial_vectors([3])[0])
    _, vs, scales = nuclear.rank_one([zeros], [u0], 0.1, 1, True)
    eps = float(ops.convert_to_numpy(scales[0])) * np.outer(
        ops.convert_to_numpy(u0), ops.convert_to_numpy(vs[0])
    )
    np.testing.assert_array_equal(eps, 0.0)


def test_nusam_needs_a_weight_matrix():
    model = keras.Sequential(
        [keras.Input((4, 2)), keras.layers.Conv1D(2, 3), keras.layers.Flatten()]
    )
    with pytest.raises(ValueError, match="kernels of Dense and EinsumDense"):
        SAMModel(model, method="nusam")


def test_power_iterations_option():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert SAMModel(model, method="nusam").options.power_iterations == 1
    with pytest.raises(ValueError, match="power_iterations"):
        SAMModel(model, method="nusam", power_iterations=0)
    with pytest.raises(ValueError, match="nuclear geometries"):
        SAMModel(model, method="sam", power_iterations=2)
