"""keras_sam.analysis against ground truth written out in NumPy.

A quadratic `L(w) = 0.5 w^T A w + b^T w` (a Keras model with one weight
vector; its Hessian is `A`, its sharpness and landscape have closed forms)
and a small tanh MLP whose Hessian is computed here, in float64, by central
differences of its analytic gradient. The eigenvalues, the trace (within
Hutchinson's standard error), the sharpness and the landscapes agree on
every backend; the callback runs inside `fit`.
"""

import gc
import itertools
import weakref

import keras
import numpy as np
import pytest
from keras import ops

from keras_sam import SAMModel, analysis

RNG = np.random.default_rng(0)
ROTATION, _ = np.linalg.qr(RNG.normal(size=(4, 4)))
A = ROTATION @ np.diag([4.0, 2.0, 1.0, 0.5]) @ ROTATION.T
B = RNG.normal(size=4)
W0 = np.array([1.0, -0.5, 0.25, 2.0])
RHO = 0.1
# Eight dummy examples: the quadratic does not read its inputs.
X_Q, Y_Q = np.zeros((8, 1), "float32"), np.zeros(8, "float32")


def quadratic_loss(w, a=A, b=B):
    return 0.5 * w @ a @ w + b @ w


class Quadratic(keras.layers.Layer):
    """Outputs `0.5 w^T A w + b^T w` for every example."""

    def __init__(self, a, b, w, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b, self.w0 = (np.asarray(t, "float32") for t in (a, b, w))

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=self.w0.shape,
            initializer=keras.initializers.Constant(self.w0),
            name="w",
        )

    def call(self, x):
        a, b = ops.convert_to_tensor(self.a), ops.convert_to_tensor(self.b)
        value = 0.5 * ops.sum(self.w * ops.matmul(a, self.w))
        return ops.zeros_like(x[:, 0]) + value + ops.sum(b * self.w)


def mean_output(y_true, y_pred):
    return y_pred


def quadratic_model(w=W0, a=A, b=B) -> keras.Model:
    inputs = keras.Input((1,))
    model = keras.Model(inputs, Quadratic(a, b, w)(inputs))
    model.compile(loss=mean_output)
    return model


# --- the MLP and its Hessian in NumPy (float64)

X_M = RNG.normal(size=(16, 3))
Y_M = RNG.normal(size=(16, 2))
SHAPES = [(3, 4), (4,), (4, 2), (2,)]
SIZES = [int(np.prod(s)) for s in SHAPES]
THETA = RNG.normal(scale=0.8, size=sum(SIZES))


def _unflatten(theta):
    return np.split(theta, np.cumsum(SIZES)[:-1])


def mlp_gradient(theta):
    """The gradient of Keras' mean squared error of tanh(x W1 + b1) W2 +
    b2, by backpropagation."""
    w1, b1, w2, b2 = (p.reshape(s) for p, s in zip(_unflatten(theta), SHAPES))
    h = np.tanh(X_M @ w1 + b1)
    d_out = 2.0 * (h @ w2 + b2 - Y_M) / Y_M.size
    d_z = d_out @ w2.T * (1.0 - h**2)
    grads = [X_M.T @ d_z, d_z.sum(0), h.T @ d_out, d_out.sum(0)]
    return np.concatenate([g.ravel() for g in grads])


def mlp_hessian(theta, step=1e-5):
    columns = []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = step
        columns.append(
            (mlp_gradient(theta + e) - mlp_gradient(theta - e)) / (2 * step)
        )
    hessian = np.stack(columns, axis=1)
    return 0.5 * (hessian + hessian.T)


HESSIAN = mlp_hessian(THETA)
EIGENVALUES = np.linalg.eigvalsh(HESSIAN)[::-1]  # descending


def mlp_model() -> keras.Model:
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    model.set_weights([p.reshape(s) for p, s in zip(_unflatten(THETA), SHAPES)])
    model.compile(loss="mse")
    return model


@pytest.fixture(scope="module")
def mlp():
    """The MLP, for the tests that only read it: its compiled functions are
    made once and reused (a trace is most of a test's time)."""
    return mlp_model()


@pytest.fixture(scope="module")
def quadratic():
    """The quadratic at `W0`, for the tests that only read it."""
    return quadratic_model()


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _vector(seed):
    flat = np.random.default_rng(seed).normal(size=sum(SIZES))
    return [p.reshape(s) for p, s in zip(_unflatten(flat), SHAPES)], flat


# --- Hessian-vector products, eigenvalues, trace


@pytest.mark.parametrize(
    "hvp, rtol", [("autodiff", 1e-4), ("finite_difference", 3e-3)]
)
def test_hessian_vector_product_is_the_numpy_hessian_times_v(hvp, rtol, mlp):
    vector, flat = _vector(1)
    hv = analysis.hessian_vector_product(
        mlp, vector, X_M, Y_M, batch_size=6, hvp=hvp
    )
    expected = HESSIAN @ flat
    np.testing.assert_allclose(
        _flat(hv), expected, rtol=rtol, atol=rtol * np.abs(expected).max()
    )


def test_quadratic_hessian_vector_product_is_a_times_v(quadratic):
    v = np.arange(4.0)
    for hvp in ("autodiff", "finite_difference"):
        hv = analysis.hessian_vector_product(quadratic, [v], X_Q, Y_Q, hvp=hvp)
        np.testing.assert_allclose(hv[0], A @ v, rtol=1e-4, atol=1e-4)


def test_power_iteration_finds_the_top_eigenvalues_and_vectors(quadratic, mlp):
    eigen = analysis.top_eigenvalues(quadratic, X_Q, Y_Q, k=2, tolerance=1e-6)
    np.testing.assert_allclose(eigen.values, [4.0, 2.0], rtol=1e-4)
    for vector, column in zip(eigen.vectors, ROTATION.T):
        assert abs(np.dot(vector[0], column)) == pytest.approx(1.0, abs=1e-3)
    mlp = analysis.top_eigenvalues(
        mlp, X_M, Y_M, iterations=300, tolerance=1e-7, batch_size=6
    )
    top = EIGENVALUES[np.argmax(np.abs(EIGENVALUES))]  # largest magnitude
    np.testing.assert_allclose(mlp.values[0], top, rtol=1e-3)


def test_lanczos_finds_the_largest_eigenvalues(quadratic, mlp):
    quadratic = analysis.top_eigenvalues(
        quadratic, X_Q, Y_Q, k=3, method="lanczos", iterations=8
    )
    np.testing.assert_allclose(quadratic.values, [4.0, 2.0, 1.0], rtol=1e-4)
    assert quadratic.products == 4  # the Krylov space is exhausted
    mlp = analysis.top_eigenvalues(
        mlp, X_M, Y_M, k=3, method="lanczos", iterations=26
    )
    np.testing.assert_allclose(mlp.values, EIGENVALUES[:3], rtol=2e-3)
    v = _flat(mlp.vectors[0])
    np.testing.assert_allclose(
        HESSIAN @ v, EIGENVALUES[0] * v, atol=1e-2 * EIGENVALUES[0]
    )


def test_hutchinson_trace_is_within_its_standard_error(quadratic, mlp):
    trace = analysis.hessian_trace(mlp, X_M, Y_M, samples=60)
    assert abs(trace.estimate - np.trace(HESSIAN)) < 3.0 * trace.stderr
    assert trace.stderr == pytest.approx(
        np.std(trace.samples, ddof=1) / np.sqrt(60)
    )
    # Rademacher z: z^T A z has variance 2 sum_{i != j} A_ij^2.
    quadratic = analysis.hessian_trace(quadratic, X_Q, Y_Q, samples=60)
    off_diagonal = np.sum(A**2) - np.sum(np.diag(A) ** 2)
    assert abs(quadratic.estimate - np.trace(A)) < 3.0 * quadratic.stderr
    np.testing.assert_allclose(
        quadratic.stderr, np.sqrt(2 * off_diagonal / 60), rtol=0.3
    )


def test_per_layer_curvature_is_that_of_the_diagonal_block(mlp):
    model = mlp
    block = HESSIAN[:16, :16]  # hidden: kernel (3, 4) and bias (4,)
    eigen = analysis.top_eigenvalues(
        model,
        X_M,
        Y_M,
        variables=model.get_layer("hidden"),
        method="lanczos",
        iterations=16,
    )
    np.testing.assert_allclose(
        eigen.values[0], np.linalg.eigvalsh(block)[-1], rtol=2e-3
    )
    kernel = model.get_layer("out").kernel
    trace = analysis.hessian_trace(
        model, X_M, Y_M, variables=[kernel], samples=40
    )
    expected = np.trace(HESSIAN[16:24, 16:24])
    assert abs(trace.estimate - expected) < 3.0 * trace.stderr + 1e-6


# --- sharpness on the quadratic (closed forms)


def _increase(delta, w=W0):
    return quadratic_loss(w + delta) - quadratic_loss(w)


def _trust_region_maximum(g, a, rho):
    """max_{||d|| <= rho} g.d + d^T A d / 2 for a positive definite A: at
    d = (mu I - A)^{-1} g with ||d|| = rho, mu > lambda_max (bisection)."""
    low, high = np.linalg.eigvalsh(a)[-1], np.linalg.eigvalsh(a)[-1] + 1e4
    for _ in range(200):
        mu = 0.5 * (low + high)
        d = np.linalg.solve(mu * np.eye(len(g)) - a, g)
        low, high = (mu, high) if np.linalg.norm(d) > rho else (low, mu)
    return g @ d + 0.5 * d @ a @ d


G = A @ W0 + B  # the gradient at W0
C = np.abs(W0) + 0.01  # ASAM's scale, eta = 0.01


@pytest.mark.parametrize(
    "geometry, norm, delta",
    [
        ("l2", "l2", RHO * G / np.linalg.norm(G)),
        ("l2", "linf", RHO * np.sign(G)),
        ("adaptive", "l2", RHO * C**2 * G / np.linalg.norm(C * G)),
        ("adaptive", "linf", RHO * C * np.sign(G)),
    ],
)
def test_one_step_worst_case_is_sams_perturbation(
    geometry, norm, delta, quadratic
):
    result = analysis.sharpness(
        quadratic,
        X_Q,
        Y_Q,
        m=2,
        radius=RHO,
        geometry=geometry,
        norm=norm,
        steps=1,
    )
    assert result.per_batch.shape == (4,)
    np.testing.assert_allclose(result.per_batch, _increase(delta), rtol=1e-4)
    assert result.mean == pytest.approx(_increase(delta), rel=1e-4)
    assert result.stderr == pytest.approx(0.0, abs=1e-6)


def test_projected_gradient_ascent_finds_the_maximum_in_the_ball(quadratic):
    model = quadratic
    l2 = analysis.sharpness(model, X_Q, Y_Q, radius=RHO, steps=20)
    expected = _trust_region_maximum(G, A, RHO)
    assert l2.mean == pytest.approx(expected, rel=2e-4)
    # A convex function is largest at a corner of the cube.
    linf = analysis.sharpness(
        model, X_Q, Y_Q, radius=RHO, norm="linf", steps=20
    )
    corners = itertools.product([-RHO, RHO], repeat=4)
    expected = max(_increase(np.array(c)) for c in corners)
    assert linf.mean == pytest.approx(expected, rel=1e-4)
    assert analysis.sharpness(model, X_Q, Y_Q, radius=0.0).mean == 0.0


def test_average_case_at_the_minimum():
    # At the minimum, L(w + d) - L(w) = d^T A d / 2. linf: d = rho * s,
    # s = +-1, and E[s^T A s] = tr(A); on a diagonal A exactly.
    diagonal = np.diag([3.0, 1.0, 0.5, 0.25])
    model = quadratic_model(w=np.zeros(4), a=diagonal, b=np.zeros(4))
    linf = analysis.sharpness(
        model, X_Q, Y_Q, radius=RHO, kind="average", norm="linf", samples=3
    )
    assert linf.mean == pytest.approx(0.5 * RHO**2 * 4.75, rel=1e-4)
    # l2: d uniform on the sphere, E[d^T A d] = rho^2 tr(A) / n.
    minimum = -np.linalg.solve(A, B)
    model = quadratic_model(w=minimum)
    l2 = analysis.sharpness(
        model, X_Q, Y_Q, m=1, radius=RHO, kind="average", samples=50
    )
    expected = 0.5 * RHO**2 * np.trace(A) / 4
    assert l2.per_batch.shape == (8,)
    assert abs(l2.mean - expected) < 4.0 * l2.stderr
    assert l2.stderr < 0.1 * expected


def test_sharpness_perturbs_only_the_chosen_variables(mlp):
    model = mlp
    everything = analysis.sharpness(model, X_M, Y_M, m=8, steps=3)
    kernel = analysis.sharpness(
        model, X_M, Y_M, m=8, steps=3, variables=[model.get_layer("out").kernel]
    )
    assert 0.0 < kernel.mean < everything.mean


# --- landscapes


D1 = np.array([1.0, 0.0, 0.5, -1.0])
D2 = np.array([0.0, 2.0, -1.0, 0.5])


def test_landscape_of_a_quadratic_is_its_paraboloid(quadratic):
    model = quadratic
    plane = analysis.landscape_2d(
        model, X_Q, Y_Q, directions=([D1], [D2]), span=(-2.0, 1.0), points=4
    )
    a = np.linspace(-2.0, 1.0, 4)
    expected = [[quadratic_loss(W0 + s * D1 + t * D2) for t in a] for s in a]
    np.testing.assert_allclose(plane.x_coordinates, a)
    np.testing.assert_allclose(plane.losses, expected, rtol=1e-5)
    line = analysis.landscape_1d(model, X_Q, Y_Q, direction=[D1], points=5)
    a = np.linspace(-1.0, 1.0, 5)
    expected = [quadratic_loss(W0 + s * D1) for s in a]
    np.testing.assert_allclose(line.losses, expected, rtol=1e-5)


def test_interpolation_between_two_models(quadratic):
    w1 = np.array([0.0, 1.0, -1.0, 3.0])
    line = analysis.interpolation(
        quadratic, quadratic_model(w=w1), X_Q, Y_Q, points=5
    )
    a = np.linspace(-0.5, 1.5, 5)
    expected = [quadratic_loss((1 - s) * W0 + s * w1) for s in a]
    np.testing.assert_allclose(line.coordinates, a)
    np.testing.assert_allclose(line.losses, expected, rtol=1e-5)


def test_interpolation_mixes_batchnorm_statistics():
    def model(mean):
        inputs = keras.Input((2,))
        outputs = keras.layers.BatchNormalization(
            moving_mean_initializer=keras.initializers.Constant(mean),
            epsilon=0.0,
        )(inputs)
        model = keras.Model(inputs, outputs)
        model.compile(loss=mean_output)
        return model

    x = np.ones((4, 2), "float32")
    line = analysis.interpolation(
        model(0.0), model(1.0), x, np.zeros(4), span=(0.0, 1.0), points=3
    )
    # Inference mode: (x - moving_mean) / sqrt(moving_var), moving_var = 1.
    np.testing.assert_allclose(line.losses, [1.0, 0.5, 0.0], atol=1e-6)


def test_filter_normalised_direction():
    model = mlp_model()
    direction = analysis.random_direction(model, seed=3)
    for d, w in zip(direction, model.get_weights()):
        if w.ndim == 1:  # biases: zero, as Li et al.
            assert np.all(d == 0.0)
        else:  # each output unit (column) has the norm of w's
            np.testing.assert_allclose(
                np.linalg.norm(d, axis=0), np.linalg.norm(w, axis=0), rtol=1e-5
            )
    again = analysis.random_direction(SAMModel(model), seed=3)
    np.testing.assert_array_equal(_flat(direction), _flat(again))
    raw = analysis.random_direction(model, filter_normalize=False)
    assert np.all(raw[1] != 0.0)


def test_plots_draw_the_landscapes(tmp_path, quadratic):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    model = quadratic
    plane = analysis.landscape_2d(
        model, X_Q, Y_Q, directions=([D1], [D2]), points=5
    )
    line = analysis.landscape_1d(model, X_Q, Y_Q, direction=[D1], points=5)
    figure, axes = pyplot.subplots(1, 3, figsize=(9, 3))
    analysis.plot_line({"d1": line}, ax=axes[0], title="line")
    analysis.plot_contour(plane, ax=axes[1])
    analysis.plot_heatmap(plane, ax=axes[2])
    figure.savefig(tmp_path / "landscape.png")
    pyplot.close(figure)
    assert (tmp_path / "landscape.png").read_bytes().startswith(b"\x89PNG")
    assert axes[0].get_title() == "line"
    with pytest.raises(TypeError, match="must be a Landscape2D"):
        analysis.plot_contour(line)


# --- the callback


def test_callback_logs_the_measure_into_history():
    model = mlp_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    eigenvalue = analysis.FlatnessCallback(
        X_M, Y_M, iterations=10, method="lanczos"
    )
    trace = analysis.FlatnessCallback(
        X_M, Y_M, measure="trace", every=2, samples=5
    )
    calls = []

    def weight_norm(model, x, y):
        calls.append(len(x))
        return float(np.linalg.norm(_flat(model.get_weights())))

    norm = analysis.FlatnessCallback(X_M, Y_M, measure=weight_norm)
    history = model.fit(
        X_M,
        Y_M,
        epochs=2,
        batch_size=8,
        verbose=0,
        callbacks=[eigenvalue, trace, norm],
    )
    logs = history.history
    assert len(logs["top_eigenvalue"]) == 2
    assert len(logs["hessian_trace"]) == 1 and trace.epochs == [1]
    assert logs["weight_norm"] == norm.values and calls == [16, 16]
    # The last value is the measure of the trained model.
    after = analysis.top_eigenvalues(
        model, X_M, Y_M, iterations=10, method="lanczos"
    )
    assert logs["top_eigenvalue"][-1] == pytest.approx(after.values[0], 1e-5)


def test_callback_measures_a_sam_model_in_fit():
    sam = SAMModel(mlp_model(), method="sam", rho=0.05)
    sam.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = analysis.FlatnessCallback(
        X_M, Y_M, measure="sharpness", batch_size=8, steps=2, radius=0.05
    )
    history = sam.fit(
        X_M, Y_M, epochs=1, batch_size=8, verbose=0, callbacks=[callback]
    )
    value = history.history["m_sharpness"][0]
    direct = analysis.sharpness(sam, X_M, Y_M, m=8, steps=2, radius=0.05)
    assert value == pytest.approx(direct.mean, rel=1e-5) and value > 0
    assert "sharpness" in history.history  # SAMModel's own, kept
    clash = analysis.FlatnessCallback(X_M, Y_M, name="loss")
    with pytest.raises(ValueError, match="The logs already hold 'loss'"):
        sam.fit(X_M, Y_M, epochs=1, verbose=0, callbacks=[clash])


# --- errors


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, radius=-0.1),
            ValueError,
            "`radius` must be a float >= 0.0; received radius=-0.1.",
        ),
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, steps=0),
            ValueError,
            "`steps` must be an int >= 1; received steps=0.",
        ),
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, m=3),
            ValueError,
            "`m` must divide the number of examples, 8, so that every "
            "batch holds m examples; received m=3. Pass the first 6 "
            "examples, or a divisor of 8.",
        ),
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, m=16),
            ValueError,
            "`m` must be at most the number of examples, 8, and divide it, "
            "so that every batch holds m examples; received m=16. Pass m=8 "
            "(one batch), a divisor of 8, or at least 16 examples.",
        ),
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, geometry="fisher"),
            ValueError,
            "`geometry` must be one of ['l2', 'adaptive']; received "
            "geometry='fisher'.",
        ),
        (
            lambda m: analysis.sharpness(m, X_Q, Y_Q, kind="best"),
            ValueError,
            "`kind` must be one of ['worst', 'average']",
        ),
        (
            lambda m: analysis.top_eigenvalues(
                m, X_Q, Y_Q, k=3, method="lanczos", iterations=2
            ),
            ValueError,
            "`iterations` must be an int >= 3; received iterations=2.",
        ),
        (
            lambda m: analysis.top_eigenvalues(m, X_Q, Y_Q, method="qr"),
            ValueError,
            "`method` must be one of ['power', 'lanczos']",
        ),
        (
            lambda m: analysis.hessian_trace(m, X_Q, Y_Q, samples=0),
            ValueError,
            "`samples` must be an int >= 1; received samples=0.",
        ),
        (
            lambda m: analysis.hessian_trace(m, X_Q, Y_Q, hvp="exact"),
            ValueError,
            "`hvp` must be one of ['autodiff', 'finite_difference']",
        ),
        (
            lambda m: analysis.hessian_trace(m, X_Q),
            ValueError,
            "`y` is needed when `x` is an array",
        ),
        (
            lambda m: analysis.hessian_trace(m, X_Q, Y_Q[:3]),
            ValueError,
            "`x` and `y` must hold as many examples; received 8 inputs and "
            "3 labels.",
        ),
        (
            lambda m: analysis.hessian_trace(
                m, X_Q, Y_Q, variables=mlp_model().trainable_variables
            ),
            ValueError,
            "`variables` must be a non-empty list of the model's trainable",
        ),
        (
            lambda m: analysis.landscape_1d(m, X_Q, Y_Q, points=1),
            ValueError,
            "`points` must be an int >= 2; received points=1.",
        ),
        (
            lambda m: analysis.landscape_1d(m, X_Q, Y_Q, span=(1.0, -1.0)),
            ValueError,
            "`span` must be a pair of floats (low, high) with low < high",
        ),
        (
            lambda m: analysis.landscape_1d(m, X_Q, Y_Q, direction=[D1[:2]]),
            ValueError,
            "`direction` must hold one array per trainable variable, shaped "
            "[(4,)]; received shapes [(2,)].",
        ),
        (
            lambda m: analysis.interpolation(m, mlp_model(), X_Q, Y_Q),
            ValueError,
            "`model_a` and `model_b` must have the same architecture",
        ),
        (
            lambda m: analysis.FlatnessCallback(X_Q, Y_Q, every=0),
            ValueError,
            "`every` must be an int >= 1; received every=0.",
        ),
        (
            lambda m: analysis.FlatnessCallback(X_Q, Y_Q, measure="norm"),
            ValueError,
            "`measure` must be one of ['top_eigenvalue', 'trace', 'sharpness']",
        ),
        (
            lambda m: analysis.FlatnessCallback(X_Q, Y_Q, radius=0.1),
            TypeError,
            "Unknown options ['radius'] for measure='top_eigenvalue'",
        ),
        (
            lambda m: analysis.FlatnessCallback(
                X_Q, Y_Q, measure="sharpness", batch_size=3
            ),
            ValueError,
            "`batch_size` must divide the number of examples, 8, so that "
            "every batch holds batch_size examples; received batch_size=3.",
        ),
        (
            lambda m: analysis.FlatnessCallback(
                X_Q, Y_Q, measure="sharpness", norm="l1"
            ),
            ValueError,
            "`norm` must be one of ['l2', 'linf']; received norm='l1'.",
        ),
    ],
)
def test_bad_arguments_are_clear_errors(call, error, message):
    with pytest.raises(error) as info:
        call(quadratic_model())
    assert message in str(info.value)


def test_a_model_without_loss_or_weights_is_a_clear_error():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, Quadratic(A, B, W0)(inputs))  # no compile
    with pytest.raises(ValueError, match="`loss` is needed"):
        analysis.hessian_trace(model, X_Q, Y_Q)
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`model` must be built"):
        analysis.hessian_trace(unbuilt, X_Q, Y_Q, loss="mse")


def test_compiled_functions_are_made_once_per_model_and_loss():
    from keras_sam.src.analysis.objective import cached_objective

    model = mlp_model()
    first = cached_objective(model)
    assert cached_objective(model) is first
    assert cached_objective(SAMModel(model), loss="mse") is first
    assert cached_objective(model, loss="mae") is not first
    hidden = cached_objective(model, variables=model.get_layer("hidden"))
    assert hidden is not first and hidden.indices == [0, 1]
    model.compile(loss="mae")
    assert cached_objective(model).loss_source == "mae"
    analysis.hessian_trace(model, X_M, Y_M, samples=1)
    # The cache keeps no model alive.
    alive = weakref.ref(model)
    del model, first, hidden
    gc.collect()
    assert alive() is None


def test_attention_has_hessian_vector_products():
    """Through MultiHeadAttention (on torch, whose fused attention kernels
    have no second derivative), autodiff agrees with finite differences."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 8))
    h = keras.layers.MultiHeadAttention(2, 4)(inputs, inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = RNG.normal(size=(6, 4, 8)).astype("float32")
    y = np.arange(6) % 3
    vector = [
        np.random.default_rng(1).normal(size=v.shape)
        for v in model.trainable_variables
    ]
    exact, approximate = (
        _flat(analysis.hessian_vector_product(model, vector, x, y, hvp=hvp))
        for hvp in ("autodiff", "finite_difference")
    )
    np.testing.assert_allclose(
        exact, approximate, atol=1e-2 * np.abs(exact).max()
    )
