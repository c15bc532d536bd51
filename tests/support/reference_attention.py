"""An independent NumPy multi-head-attention classifier for the nuSAM tests.

x (batch, tokens, dim) -> multi-head self-attention (Vaswani et al. 2017)
-> mean over tokens -> dense head -> softmax cross-entropy. Gradients by
central finite differences in float64, so nothing here shares code (or even
a backward pass) with Keras or keras_sam.
"""

from __future__ import annotations

import numpy as np

DIM, HEADS, KEY_DIM, CLASSES, TOKENS = 4, 2, 3, 3, 5

# Variables in Keras' order for MultiHeadAttention -> pooling -> Dense.
SHAPES = {
    "wq": (DIM, HEADS, KEY_DIM),
    "bq": (HEADS, KEY_DIM),
    "wk": (DIM, HEADS, KEY_DIM),
    "bk": (HEADS, KEY_DIM),
    "wv": (DIM, HEADS, KEY_DIM),
    "bv": (HEADS, KEY_DIM),
    "wo": (HEADS, KEY_DIM, DIM),
    "bo": (DIM,),
    "head": (DIM, CLASSES),
    "head_bias": (CLASSES,),
}
# Row axes of each weight matrix: the kernel axes that index the input.
MATRICES = {"wq": (0,), "wk": (0,), "wv": (0,), "wo": (0, 1), "head": (0,)}


def init_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.5, s) for n, s in SHAPES.items()}


def loss(params: dict, x, y, sample_weight=None) -> float:
    p = params
    q = np.einsum("btd,dhk->bthk", x, p["wq"]) + p["bq"]
    k = np.einsum("btd,dhk->bthk", x, p["wk"]) + p["bk"]
    v = np.einsum("btd,dhk->bthk", x, p["wv"]) + p["bv"]
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(KEY_DIM)
    scores = scores - scores.max(axis=-1, keepdims=True)
    attention = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
    heads = np.einsum("bhqs,bshk->bqhk", attention, v)
    out = np.einsum("bqhk,hkd->bqd", heads, p["wo"]) + p["bo"]
    logits = out.mean(axis=1) @ p["head"] + p["head_bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    n = x.shape[0]
    s = np.ones(n) if sample_weight is None else sample_weight
    return float(-(s * logp[np.arange(n), y]).sum() / n)


def loss_and_grad(params, x, y, sample_weight=None, h: float = 1e-6):
    x = np.asarray(x, np.float64)
    grads = {}
    for name, value in params.items():
        g = np.zeros(value.shape)
        for index in np.ndindex(value.shape):
            shifted = {k: a.copy() for k, a in params.items()}
            shifted[name][index] = value[index] + h
            up = loss(shifted, x, y, sample_weight)
            shifted[name][index] = value[index] - h
            g[index] = (up - loss(shifted, x, y, sample_weight)) / (2 * h)
        grads[name] = g
    return loss(params, x, y, sample_weight), grads


def make_batches(n_batches: int = 8, batch: int = 6, seed: int = 2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches, batch, TOKENS, DIM))
    y = rng.integers(0, CLASSES, size=(n_batches, batch))
    return x, y
