"""An independent NumPy reference of the SAM family, written from the papers.

Nothing here is derived from `keras_sam`: the model (Dense -> LayerNorm ->
tanh -> Dense, softmax cross-entropy) has a hand-written forward and
backward pass in float64, and the parameters live in ONE flat vector with a
slice per variable, so every "global" norm is a plain vector norm and every
per-variable quantity is a slice. The SAM variants follow the equations
cited at each function; docs/semantics.md records how the ambiguities
of the papers are resolved.

Papers (under shared/papers):
    SAM: Foret et al. 2021, eq. 2-3 (as recalled in LookSAM eq. 2-3).
    nuSAM / nuSAM-Norm: Ahn et al. 2024, Alg. 1-2 and App. C.1 eq. 21.
    ASAM / Fisher / linf / SAM-ON: Mueller et al. 2023, eq. 5 and Table 9.
    F-SAM: Li et al. 2024, Alg. 1.
    MSAM: Becker, Altrock and Risse 2024, Fig. 1 (SGD with Momentum-SAM);
        not under shared/papers.
    LayerSAM, LookSAM, SAM-k: Liu et al. 2022, eq. 4 and 7, Alg. 1-3.

Papers not under shared/papers (the descent rules and AE-SAM's schedule):
    GSAM: Zhuang et al., "Surrogate Gap Minimization Improves
        Sharpness-Aware Training", ICLR 2022, Alg. 1 (the decomposition of
        the clean gradient against the perturbed one).
    WSAM: Yue et al., "Sharpness-Aware Minimization Revisited: Weighted
        Sharpness as a Regularization Term", KDD 2023 (the WSAM loss, its
        decoupled update, Alg. 1).
    AE-SAM / AE-LookSAM: Jiang et al., "An Adaptive Policy to Employ
        Sharpness-Aware Minimization", ICLR 2023, Sec. 3 (the running
        statistics of ||g||^2 and the test against them).
    RST: Zhao, Zhang and Hu, "Randomized Sharpness-Aware Training for
        Boosting Computational Efficiency in Deep Learning", 2022, Alg. 1
        (a Bernoulli trial per step), with the draws docs/semantics.md
        specifies.
    Adam (for the decoupled WSAM test): Kingma & Ba, ICLR 2015, Alg. 1 in
        the "more efficient" order of its Sec. 2.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DELTA = 1e-12
LN_EPSILON = 1e-3  # keras.layers.LayerNormalization's default

# Trainable variables of the reference model, in Keras' order.
NAMES = ("w1", "b1", "gamma", "beta", "w2", "b2")
NORM_NAMES = ("gamma", "beta")
BIAS_NAMES = ("b1", "beta", "b2")


class FlatParams:
    """Slices of a flat parameter vector, one per named variable."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes
        self.names = tuple(shapes)
        self.slices = {}
        start = 0
        for name in self.names:
            size = int(np.prod(shapes[name]))
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start

    def flatten(self, arrays: dict) -> np.ndarray:
        return np.concatenate(
            [np.asarray(arrays[n], np.float64).ravel() for n in self.names]
        )

    def unflatten(self, theta: np.ndarray) -> dict:
        return {
            n: theta[self.slices[n]].reshape(self.shapes[n]) for n in self.names
        }

    def indicator(self, names) -> np.ndarray:
        """1.0 on the coordinates of `names`, 0.0 elsewhere."""
        out = np.zeros(self.size)
        for n in names:
            out[self.slices[n]] = 1.0
        return out


def init_params(
    n_in: int = 6, n_hidden: int = 8, n_out: int = 3, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.5, (n_in, n_hidden)),
        "b1": rng.normal(0, 0.1, (n_hidden,)),
        "gamma": 1.0 + rng.normal(0, 0.1, (n_hidden,)),
        "beta": rng.normal(0, 0.1, (n_hidden,)),
        "w2": rng.normal(0, 0.5, (n_hidden, n_out)),
        "b2": rng.normal(0, 0.1, (n_out,)),
    }


def loss_and_grad(
    params: dict, x, y, sample_weight=None, l2: float = 0.0
) -> tuple[float, dict]:
    """Mean weighted cross-entropy (+ `l2 * sum(w1^2)`) and its gradient.

    Keras' "sum_over_batch_size": `sum_i s_i * loss_i / n`.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight)
    z = x @ params["w1"] + params["b1"]
    mu = z.mean(axis=1, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(var + LN_EPSILON)
    xhat = (z - mu) * inv
    a = params["gamma"] * xhat + params["beta"]
    h = np.tanh(a)
    logits = h @ params["w2"] + params["b2"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    onehot = np.eye(logits.shape[1])[np.asarray(y)]
    loss = -(s * (onehot * logp).sum(axis=1)).sum() / n
    loss += l2 * np.sum(params["w1"] ** 2)

    dlogits = (np.exp(logp) - onehot) * (s / n)[:, None]
    grads = {"w2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}
    da = (dlogits @ params["w2"].T) * (1.0 - h**2)
    grads["gamma"] = (da * xhat).sum(axis=0)
    grads["beta"] = da.sum(axis=0)
    dxhat = da * params["gamma"]
    dz = inv * (
        dxhat
        - dxhat.mean(axis=1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)
    )
    grads["w1"] = x.T @ dz + 2.0 * l2 * params["w1"]
    grads["b1"] = dz.sum(axis=0)
    return float(loss), grads


@dataclasses.dataclass
class Config:
    """A point of the method space, spelled out (no presets here)."""

    geometry: str = "l2"  # l2 | adaptive | fisher | layer | nuclear(_norm)
    norm: str = "l2"  # l2 | linf
    layerwise: bool = False  # adaptive only
    eta: float = 0.01
    normalize_bias: bool = False
    perturbed: tuple[str, ...] = NAMES
    friendly: bool = False
    direction: str = "gradient"  # gradient | momentum (MSAM)
    ema_decay: float = 0.9  # F-SAM's lambda; MSAM's momentum mu
    sigma: float = 1.0
    layer_scale: str = "eq7"  # layer geometry: eq7 | layer | global
    reuse: str | None = None  # None | look | every_k
    k: int = 5
    alpha: float = 0.7
    reuse_scale: str = "gradient"  # look: gradient | stored | relative
    start_step: int = 0
    rho: object = 0.05  # float, or a function of the SAM step t
    power_iterations: int = 1
    exact_svd: bool = False  # nuclear: the exact top singular pair instead
    policy: str = "periodic"  # periodic | adaptive (AE-SAM) | random (RST)
    policy_decay: float = 0.9  # AE-SAM's delta
    policy_threshold: object = 0.0  # AE-SAM's c_t: float or function of t
    ascent_probability: object = 0.5  # RST's p_t: float or function of t
    policy_seed: int = 0
    descent: str = "sam"  # sam | gsam | wsam
    gsam_alpha: float = 0.6
    gamma: float = 0.9
    decoupled: bool = False  # wsam: the sharpness term outside Adam / SGD


# The MLP's weight matrices and the axes forming their rows (fan-in).
MLP_MATRICES = {"w1": (0,), "w2": (0,)}


class Reference:
    """Runs the SAM family with plain SGD on a model given by its
    `loss_fn(params, x, y, sample_weight) -> (loss, grads)` (default: the
    MLP above, with an optional `l2` penalty on w1).

    `matrices` maps each weight-matrix variable to the axes that form the
    rows of its matrix view (nuclear geometries).
    """

    def __init__(
        self,
        config: Config,
        params: dict,
        lr: float,
        l2=0.0,
        loss_fn=None,
        matrices=None,
        optimizer: str = "sgd",
    ):
        self.c = config
        self.optimizer = optimizer  # sgd | adam (Keras' defaults)
        names = NAMES if loss_fn is None else tuple(params)
        self.flat = FlatParams({n: np.shape(params[n]) for n in names})
        self.loss_fn = loss_fn or (
            lambda p, x, y, s: loss_and_grad(p, x, y, s, l2)
        )
        self.matrices = MLP_MATRICES if matrices is None else matrices
        # nuSAM's fan-in vectors: rng(0), in variable order, normalised.
        rng = np.random.default_rng(0)
        self.u = {}
        for n in names:
            if n in self.matrices and n in config.perturbed:
                shape = np.shape(params[n])
                rows = int(np.prod([shape[a] for a in self.matrices[n]]))
                u = rng.standard_normal(rows)
                self.u[n] = (u / np.linalg.norm(u)).astype(np.float32)
        self.theta = self.flat.flatten(params)
        self.lr = lr
        self.step_count = 0
        self.m = np.zeros(self.flat.size)  # F-SAM EMA, m_{-1} = 0
        self.v = np.zeros(self.flat.size)  # MSAM's momentum, v_0 = 0
        self.g_v = np.zeros(self.flat.size)  # LookSAM's stored g_v
        self.g_v_norm_at_ascent = 0.0  # ||g|| of the last ascent step
        self.mask = self.flat.indicator(config.perturbed)
        self.last_sharpness = None
        self.last_loss = None
        self.norm_mean = 0.0  # AE-SAM's running mean of ||g||^2
        self.norm_variance = 0.0  # and variance
        self.adam_m = np.zeros(self.flat.size)
        self.adam_v = np.zeros(self.flat.size)
        self.applied = 0  # optimizer steps
        self.ascents = []  # whether each step took an ascent

    def params(self) -> dict:
        return self.flat.unflatten(self.theta)

    def grad(self, theta, x, y, sample_weight):
        loss, g = self.loss_fn(self.flat.unflatten(theta), x, y, sample_weight)
        return loss, self.flat.flatten(g)

    def _as_matrix(self, name, vector):
        """The tensor `name` as (rows, cols): its row axes first."""
        shape = self.flat.shapes[name]
        rows = self.matrices[name]
        order = rows + tuple(a for a in range(len(shape)) if a not in rows)
        tensor = vector.reshape(shape).transpose(order)
        n_rows = int(np.prod([shape[a] for a in rows]))
        return tensor.reshape(n_rows, -1), order

    def _nuclear(self, d):
        """nuSAM Alg. 1-2 (or the exact SVD), nuSAM-Norm App. C.1."""
        tau, c = 1e-12, self.c
        factors = {}
        for n in self.u:
            A, order = self._as_matrix(n, d[self.flat.slices[n]])
            if c.exact_svd:
                U, S, Vt = np.linalg.svd(A)
                u, v = U[:, 0], Vt[0]
            else:
                u = self.u[n].astype(np.float64)
                for _ in range(c.power_iterations):
                    v = A.T @ u / (np.linalg.norm(A.T @ u) + tau)
                    u = A @ v / (np.linalg.norm(A @ v) + tau)
            self.u[n] = u
            factors[n] = (u, v, u @ A @ v, order)
        total = np.sqrt(sum(f[2] ** 2 for f in factors.values()))
        eps = np.zeros(self.flat.size)
        for n, (u, v, sigma, order) in factors.items():
            scale = self.rho
            if c.geometry == "nuclear_norm":
                scale = self.rho * sigma / (total + DELTA)
            shape = self.flat.shapes[n]
            permuted = np.outer(u, v).reshape([shape[a] for a in order])
            eps[self.flat.slices[n]] = (
                scale * permuted.transpose(np.argsort(order))
            ).ravel()
        return eps

    # -- geometries: eps on the masked coordinates, zero elsewhere ----------

    def _diag_perturbation(self, d, T):
        """SAM-ON eq. 5: l2 `rho T^2 d / ||T d||`; linf `rho T sign(d)`."""
        rho = self.rho
        if self.c.norm == "linf":
            return rho * T * np.sign(d)
        Td = T * d
        return rho * T * Td / (np.linalg.norm(Td) + DELTA)

    def epsilon(self, g, d, theta):
        c, m = self.c, self.mask
        d = d * m
        g = g * m
        if c.geometry in ("nuclear", "nuclear_norm"):
            return self._nuclear(d)
        if c.geometry == "l2":  # Foret et al. eq. 2
            return self._diag_perturbation(d, m)
        if c.geometry == "adaptive":  # Kwon et al.; SAM-ON Table 9
            T = np.zeros(self.flat.size)
            for n in c.perturbed:
                sl = self.flat.slices[n]
                if n in BIAS_NAMES and not c.normalize_bias:
                    T[sl] = 1.0
                elif c.layerwise:
                    T[sl] = np.linalg.norm(theta[sl]) + c.eta
                else:
                    T[sl] = np.abs(theta[sl]) + c.eta
            return self._diag_perturbation(d, T)
        if c.geometry == "fisher":  # Kim et al.; SAM-ON Table 9
            T = m / np.sqrt(1.0 + c.eta * g**2)
            return self._diag_perturbation(d, T)
        if c.geometry == "layer":
            return self._layer(g, d, theta)
        raise ValueError(c.geometry)

    def _layer(self, g, d, theta):
        """LayerSAM, per variable i (slices of the flat vectors):
        eq7 (LookSAM paper eq. 7, p = q = 2): rho ||w_i|| / ||g_i|| d_i / ||d||;
        layer: rho ||w_i|| d_i / ||d_i|| (a fraction rho of each norm);
        global: rho ||w_i|| / ||w|| d_i / ||d_i|| (a total radius rho)."""
        c = self.c
        eps = np.zeros(self.flat.size)
        w_total = np.linalg.norm(theta * self.mask)
        for n in c.perturbed:
            sl = self.flat.slices[n]
            w_norm = np.linalg.norm(theta[sl])
            if c.layer_scale == "eq7":
                scale = w_norm / (np.linalg.norm(g[sl]) + DELTA)
                unit = d[sl] / (np.linalg.norm(d) + DELTA)
            else:
                scale = w_norm
                if c.layer_scale == "global":
                    scale = w_norm / (w_total + DELTA)
                unit = d[sl] / (np.linalg.norm(d[sl]) + DELTA)
            eps[sl] = self.rho * scale * unit
        return eps

    # -- one training step --------------------------------------------------

    def _look_store(self, g, g_s):
        """LookSAM Alg. 1: g_v = g_s - ||g_s|| cos(theta) g / ||g||, and the
        clean gradient's norm at this ascent (for reuse_scale="relative")."""
        cos_term = np.dot(g, g_s) / (np.dot(g, g) + DELTA)
        self.g_v = g_s - cos_term * g
        self.g_v_norm_at_ascent = np.linalg.norm(g)

    def _look_reuse(self, g):
        """The reuse step: g + alpha c g_v, with c = ||g|| / ||g_v|| (Alg.
        1, "gradient"), 1 ("stored") or ||g|| / ||g at the ascent||
        ("relative")."""
        c = self.c
        if c.reuse_scale == "gradient":
            factor = np.linalg.norm(g) / (np.linalg.norm(self.g_v) + DELTA)
        elif c.reuse_scale == "stored":
            factor = 1.0
        else:
            factor = np.linalg.norm(g) / (self.g_v_norm_at_ascent + DELTA)
        return g + c.alpha * factor * self.g_v

    # -- the descent rule, the policy, the optimizer --------------------------

    def descend(self, g, g_s):
        """The update of an ascent step and the decoupled term (or None).

        sam: g_s. gsam (Zhuang et al., Alg. 1): g = g_par + g_perp with
        g_par = (<g, g_s> / ||g_s||^2) g_s; update g_s - alpha g_perp.
        wsam (Yue et al.): the gradient of L + gamma / (1 - gamma) (L_s - L),
        g + gamma / (1 - gamma) (g_s - g); decoupled, the optimizer takes g
        and the sharpness term is applied after it.
        """
        c = self.c
        if c.descent == "gsam":
            g_par = np.dot(g, g_s) / (np.dot(g_s, g_s) + DELTA) * g_s
            return g_s - c.gsam_alpha * (g - g_par), None
        if c.descent == "wsam":
            sharpness = c.gamma / (1.0 - c.gamma) * (g_s - g)
            if c.decoupled:
                return g, sharpness
            return g + sharpness, None
        return g_s, None

    def ascends(self, g, t) -> bool:
        c = self.c
        if c.policy == "random":  # RST, Alg. 1: a Bernoulli(p_t) trial
            p = c.ascent_probability
            return rst_draw(t, c.policy_seed) < (p(t) if callable(p) else p)
        return self._ae_ascends(g, t)

    def _ae_ascends(self, g, t) -> bool:
        """AE-SAM (Jiang et al., Sec. 3): the running mean and variance of
        ||g||^2 take this step's value (mean first), then ascend iff
        ||g||^2 >= mean + c_t * std."""
        c = self.c
        if c.policy != "adaptive":
            return c.reuse is None or t % c.k == 0
        s = float(np.dot(g, g))
        d = c.policy_decay
        self.norm_mean = d * self.norm_mean + (1 - d) * s
        self.norm_variance = (
            d * self.norm_variance + (1 - d) * (s - self.norm_mean) ** 2
        )
        threshold = c.policy_threshold
        if callable(threshold):
            threshold = threshold(t)
        return s >= self.norm_mean + threshold * np.sqrt(self.norm_variance)

    def apply(self, update, decoupled=None):
        """The base optimizer's step on `update`, then (WSAM, decoupled)
        theta -= lr * decoupled. SGD, or Adam (Kingma & Ba, Alg. 1 in the
        order of their Sec. 2: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), theta
        -= lr_t m / (sqrt(v) + eps); Keras' defaults). `lr` is a float or a
        function of the 0-based optimizer step."""
        lr = self.lr(self.applied) if callable(self.lr) else self.lr
        self.applied += 1
        if self.optimizer == "adam":
            b1, b2, eps, n = 0.9, 0.999, 1e-7, self.applied
            self.adam_m = b1 * self.adam_m + (1 - b1) * update
            self.adam_v = b2 * self.adam_v + (1 - b2) * update**2
            rate = lr * np.sqrt(1 - b2**n) / (1 - b1**n)
            self.theta = self.theta - rate * self.adam_m / (
                np.sqrt(self.adam_v) + eps
            )
        else:
            self.theta = self.theta - lr * update
        if decoupled is not None:
            self.theta = self.theta - lr * decoupled

    def _momentum_step(self, x, y, sample_weight, t):
        """MSAM (Becker et al. 2024, Fig. 1): the one gradient of the step,
        g = grad L(w~) at the look-ahead w~ = w - rho v / ||v|| (the
        geometry's perturbation along -v), is the update, applied from w;
        then v = mu v + g (v_0 = 0: the first gradient is taken at w). Over
        the perturbed coordinates; before start_step a plain step, v
        unchanged."""
        c = self.c
        eps = np.zeros(self.flat.size)
        if t >= 0:
            self.rho = c.rho(t) if callable(c.rho) else c.rho
            eps = self.epsilon(-self.v, -self.v, self.theta)
        loss, g = self.grad(self.theta + eps, x, y, sample_weight)
        self.last_loss, self.last_sharpness = loss, None
        self.ascents.append(False)
        if t >= 0:
            self.v = np.where(self.mask > 0, c.ema_decay * self.v + g, 0)
        self.apply(g)

    def step(self, x, y, sample_weight=None):
        c = self.c
        t = self.step_count - c.start_step
        self.step_count += 1
        if c.direction == "momentum":
            return self._momentum_step(x, y, sample_weight, t)
        loss, g = self.grad(self.theta, x, y, sample_weight)
        self.last_loss, self.last_sharpness = loss, None
        if t < 0:  # perturbation delay: a plain step
            self.ascents.append(False)
            self.apply(g)
            return
        self.rho = c.rho(t) if callable(c.rho) else c.rho
        d = g
        if c.friendly:  # F-SAM Alg. 1 lines 5 and 7 (m updated first)
            self.m = np.where(
                self.mask > 0, c.ema_decay * self.m + (1 - c.ema_decay) * g, 0
            )
            d = g - c.sigma * self.m
        ascent = self.ascends(g, t)
        self.ascents.append(bool(ascent))
        decoupled = None
        if ascent:
            eps = self.epsilon(g, d, self.theta)
            loss_s, g_s = self.grad(self.theta + eps, x, y, sample_weight)
            self.last_sharpness = loss_s - loss
            if c.reuse == "look":
                self._look_store(g, g_s)
            update, decoupled = self.descend(g, g_s)
        elif c.reuse == "look":
            update = self._look_reuse(g)
        else:  # SAM-k, AE-SAM: plain gradient between ascents
            update = g
        self.apply(update, decoupled)


RST_PRIME = 32717  # docs/semantics.md, "RST's draws"


def rst_draw(t: int, seed: int) -> float:
    """u_t in [0, 1): from x = seed mod P, for each base-P digit of t (low
    first) two rounds of x -> (16807 x + digit + 1)^3 mod P; u_t = x / P."""
    x = seed % RST_PRIME
    for digit in (t % RST_PRIME, t // RST_PRIME % RST_PRIME):
        for _ in range(2):
            x = pow(16807 * x + digit + 1, 3, RST_PRIME)
    return x / RST_PRIME


def step_per_replica(ref: Reference, x, y, replicas: int) -> None:
    """One step of `ref` with `ascent="per_replica"` on `replicas` equal,
    contiguous shards of the batch (m-sharpness, m = batch / replicas).

    As docs/distributed.md states: each shard perturbs with the gradient of
    its own mean loss (with F-SAM, `g_r - sigma m`), and the descent gradient
    is the mean of the shards' gradients at their own perturbed weights;
    with a descent rule, the mean of the shards' own updates (each shard
    decomposes its own `g_r` and `g_r^s`, as the GSAM code does per worker).
    Everything kept between steps follows the global-batch gradient `g`
    (the mean of the shards'), as in `Reference.step`: F-SAM's EMA,
    LookSAM's `g_v` and the reuse steps, AE-SAM's statistics, and nuSAM's
    `u` (advanced by the power iteration on `g`, while each shard starts
    its own from the same `u`).
    """
    c = ref.c
    t = ref.step_count - c.start_step
    ref.step_count += 1
    shards = list(zip(np.split(x, replicas), np.split(y, replicas)))
    grads = [ref.grad(ref.theta, xr, yr, None)[1] for xr, yr in shards]
    g = np.mean(grads, axis=0)
    if t < 0:
        ref.apply(g)
        return
    ref.rho = c.rho(t) if callable(c.rho) else c.rho
    if c.friendly:
        ref.m = np.where(
            ref.mask > 0, c.ema_decay * ref.m + (1 - c.ema_decay) * g, 0
        )

    def direction(gradient):
        return gradient - c.sigma * ref.m if c.friendly else gradient

    decoupled = None
    if ref.ascends(g, t):
        u = dict(ref.u)
        sam_grads, updates, terms = [], [], []
        for g_r, (xr, yr) in zip(grads, shards):
            ref.u = dict(u)
            eps = ref.epsilon(g_r, direction(g_r), ref.theta)
            sam_grads.append(ref.grad(ref.theta + eps, xr, yr, None)[1])
            update, term = ref.descend(g_r, sam_grads[-1])
            updates.append(update)
            terms.append(term)
        ref.u = dict(u)
        if ref.u:  # nuSAM: u follows the global gradient
            ref.epsilon(g, direction(g), ref.theta)
        if c.reuse == "look":
            ref._look_store(g, np.mean(sam_grads, axis=0))
        update = np.mean(updates, axis=0)
        if terms[0] is not None:
            decoupled = np.mean(terms, axis=0)
    elif c.reuse == "look":
        update = ref._look_reuse(g)
    else:
        update = g
    ref.apply(update, decoupled)


def make_batches(
    n_batches: int = 8,
    batch: int = 16,
    n_in: int = 6,
    n_out: int = 3,
    seed: int = 1,
):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches, batch, n_in))
    y = rng.integers(0, n_out, size=(n_batches, batch))
    return x, y


def lamb(
    weights: dict,
    gradients: list[dict],
    lr,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-6,
    weight_decay: float = 0.0,
    no_decay: tuple[str, ...] = (),
    no_adaptation: tuple[str, ...] = (),
) -> list[dict]:
    """LAMB (You et al. 2019, Algorithm 2, with Adam's bias correction as in
    the reference TF code): the weights after each step of `gradients`.

    `lr` is a float or a function of the 0-based step index."""
    w = {n: np.asarray(a, np.float64).copy() for n, a in weights.items()}
    m = {n: np.zeros_like(a) for n, a in w.items()}
    v = {n: np.zeros_like(a) for n, a in w.items()}
    out = []
    for t, grads in enumerate(gradients, start=1):
        for n in w:
            g = np.asarray(grads[n], np.float64)
            m[n] = beta_1 * m[n] + (1 - beta_1) * g
            v[n] = beta_2 * v[n] + (1 - beta_2) * g**2
            r = (m[n] / (1 - beta_1**t)) / (
                np.sqrt(v[n] / (1 - beta_2**t)) + epsilon
            )
            if n not in no_decay:
                r = r + weight_decay * w[n]
            trust = 1.0
            if n not in no_adaptation:
                wn, rn = np.linalg.norm(w[n]), np.linalg.norm(r)
                trust = wn / rn if wn > 0 and rn > 0 else 1.0
            rate = lr(t - 1) if callable(lr) else lr
            w[n] = w[n] - rate * trust * r
        out.append({n: a.copy() for n, a in w.items()})
    return out
