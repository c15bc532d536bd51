"""LookSAM's reuse term, step by step: what it does to the loss (JAX only).

Trains the demo's ViT on the noisy digits (`keras_sam.demo`) with LookSAM
written out in plain JAX (independent of `SAMModel`, the same formulas as
Liu et al. 2022, Alg. 1): every `k` steps an ascent computes the SAM
gradient `g_s` at `w + rho g / ||g||` and stores `g_v = g_s - (<g, g_s> /
||g||^2) g`; the other steps update with `g + r`, the reuse term
`r = alpha * c * g_v` scaled as `--reuse-scale` says (`gradient`: `c =
||g|| / ||g_v||`, Alg. 1; `stored`: `c = 1`; `relative`: `c = ||g|| /
||g_a||`, `g_a` the clean gradient of the ascent). `--method sam` ascends
every step, `base` never.

Records per step, as JSON lines: the minibatch loss, `||r|| / ||g||`, the
cosine of `r` with the current clean minibatch gradient (by lag since the
ascent), with the full-training-set gradient `G` (noisy labels) and with
the gradient of the mean negative entropy of the predictions (a positive
cosine: descending along `r` makes the predictions more uniform), and what
the reuse term changes in one step: the full-set loss and prediction
entropy after the optimizer's update of `g + r`, minus those after its
update of `g` alone (and the change of the full-set loss by the update of
`g` alone, for scale). At each ascent, `||g_v|| / ||g||` and the cosine of
`g_v` with the Hessian-vector product `H g` projected orthogonally to `g`
(`g_v ~ rho / ||g|| (H g)_perp`: descending along `g_v` shrinks the
gradient norm). Prints a summary per phase of training.

    KERAS_BACKEND=jax python benchmarks/look_diagnostics.py \\
        --reuse-scale gradient --rho 0.05 --out /tmp/look_gradient.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam.demo import noisy_digits as demo  # noqa: E402

LN10 = math.log(10.0)


def dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(a, b))


def norm(a):
    return jnp.sqrt(dot(a, a))


def cosine(a, b):
    return dot(a, b) / (norm(a) * norm(b) + 1e-30)


def axpy(alpha, x, y):
    """`alpha * x + y` on lists."""
    return [alpha * a + b for a, b in zip(x, y)]


def build(args):
    """The jitted functions of the run, on lists of arrays."""
    model = demo.make_model("vit", args.seed)
    data = demo.noisy_digits(args.noise, args.seed)
    steps_per_epoch = math.ceil(len(data.x) / args.batch_size)
    optimizer = demo.base_optimizer(
        args.optimizer, args.epochs * steps_per_epoch
    )
    optimizer.build(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]

    def logits_of(weights, x):
        logits, _ = model.stateless_call(weights, non_trainable, x)
        return logits

    def loss_of(weights, x, y):
        logits = logits_of(weights, x)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], 1))

    def negentropy_of(weights, x):
        log_p = jax.nn.log_softmax(logits_of(weights, x))
        return jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=-1))

    grad = jax.jit(jax.value_and_grad(loss_of))

    @jax.jit
    def ascent(weights, x, y, g, rho):
        scale = rho / (norm(g) + 1e-12)
        return jax.grad(loss_of)(axpy(scale, g, weights), x, y)

    @jax.jit
    def hessian_g(weights, x, y, g):
        return jax.jvp(lambda w: jax.grad(loss_of)(w, x, y), (weights,), (g,))[
            1
        ]

    @jax.jit
    def full(weights, x, y):
        loss, g = jax.value_and_grad(loss_of)(weights, x, y)
        negentropy, dn = jax.value_and_grad(negentropy_of)(weights, x)
        return loss, g, -negentropy, dn

    @jax.jit
    def full_loss_entropy(weights, x, y):
        return loss_of(weights, x, y), -negentropy_of(weights, x)

    @jax.jit
    def apply(optimizer_values, update, weights):
        return optimizer.stateless_apply(optimizer_values, update, weights)

    @jax.jit
    def accuracy(weights, x, y):
        return jnp.mean(jnp.argmax(logits_of(weights, x), -1) == y)

    return dict(
        model=model,
        data=data,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        grad=grad,
        ascent=ascent,
        hessian_g=hessian_g,
        full=full,
        full_loss_entropy=full_loss_entropy,
        apply=apply,
        accuracy=accuracy,
    )


def full_measures(f, weights, optimizer_values, g, r) -> dict:
    """The reuse term `r` against the full training set (noisy labels)."""
    x, y = f["x"], f["y"]
    loss, big_g, entropy, dn = f["full"](weights, x, y)
    update = axpy(1.0, r, g)
    plain, _ = f["apply"](optimizer_values, g, weights)
    reused, _ = f["apply"](optimizer_values, update, weights)
    l_plain, e_plain = f["full_loss_entropy"](plain, x, y)
    l_reused, e_reused = f["full_loss_entropy"](reused, x, y)
    return dict(
        cos_r_full=float(cosine(r, big_g)),
        cos_g_full=float(cosine(g, big_g)),
        cos_r_negentropy=float(cosine(r, dn)),
        full_loss=float(loss),
        full_g_norm=float(norm(big_g)),
        entropy=float(entropy),
        d_loss_plain=float(l_plain - loss),
        d_loss_reuse=float(l_reused - l_plain),
        d_entropy_reuse=float(e_reused - e_plain),
    )


def train(args) -> list[dict]:
    f = build(args)
    data = f["data"]
    weights = [v.value for v in f["model"].trainable_variables]
    optimizer_values = [v.value for v in f["optimizer"].variables]
    x_all, y_all = jnp.asarray(data.x), jnp.asarray(data.y)
    f["x"], f["y"] = x_all, y_all
    rng = np.random.default_rng(args.seed)
    stored = None  # g_v (or g_v / ||g_a|| for "relative")
    ascent_step = None
    records = []
    step = 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(data.x))
        for start in range(0, len(order), args.batch_size):
            index = order[start : start + args.batch_size]
            x, y = x_all[index], y_all[index]
            loss, g = f["grad"](weights, x, y)
            record = {"step": step, "epoch": epoch, "loss": float(loss)}
            takes_ascent = args.method == "sam" or (
                args.method == "look" and step % args.k == 0
            )
            g_norm = norm(g)
            record["g_norm"] = float(g_norm)
            update = g
            if args.method != "base" and takes_ascent:
                g_s = f["ascent"](weights, x, y, g, args.rho)
                c = dot(g, g_s) / (dot(g, g) + 1e-12)
                g_v = axpy(-c, g, g_s)
                h = f["hessian_g"](weights, x, y, g)
                h_perp = axpy(-dot(g, h) / (dot(g, g) + 1e-12), g, h)
                record.update(
                    ascent=True,
                    gv_ratio=float(norm(g_v) / g_norm),
                    cos_gv_hg_perp=float(cosine(g_v, h_perp)),
                    cos_gs_g=float(cosine(g_s, g)),
                )
                stored = g_v
                if args.reuse_scale == "relative":
                    stored = [v / (g_norm + 1e-12) for v in g_v]
                ascent_step = step
                update = g_s
            elif args.method == "look" and stored is not None:
                if args.reuse_scale == "gradient":
                    factor = args.alpha * g_norm / (norm(stored) + 1e-12)
                elif args.reuse_scale == "relative":
                    factor = args.alpha * g_norm
                else:
                    factor = args.alpha
                r = [factor * v for v in stored]
                update = axpy(1.0, r, g)
                record.update(
                    ascent=False,
                    lag=step - ascent_step,
                    r_ratio=float(norm(r) / g_norm),
                    cos_r_g=float(cosine(r, g)),
                )
                if step % args.full_every == 0:
                    record.update(
                        full_measures(f, weights, optimizer_values, g, r)
                    )
            weights, optimizer_values = f["apply"](
                optimizer_values, update, weights
            )
            records.append(record)
            step += 1
        test = float(
            f["accuracy"](weights, jnp.asarray(data.x_test), data.y_test)
        )
        records[-1]["test_accuracy"] = test
        if args.verbose:
            print(
                f"epoch {epoch + 1}: loss {records[-1]['loss']:.4f} "
                f"test {test:.3f}",
                flush=True,
            )
    clean = float(f["accuracy"](weights, x_all, jnp.asarray(data.y_clean)))
    records[-1]["train_clean_accuracy"] = clean
    return records


def summary(records: list[dict], epochs: int) -> None:
    """Means per phase of training (thirds of the epochs)."""
    edges = [0, max(1, epochs // 6), epochs // 3, 2 * epochs // 3, epochs]
    keys = (
        "loss",
        "gv_ratio",
        "cos_gv_hg_perp",
        "r_ratio",
        "cos_r_g",
        "cos_r_full",
        "cos_g_full",
        "cos_r_negentropy",
        "d_loss_plain",
        "d_loss_reuse",
        "d_entropy_reuse",
        "entropy",
    )
    print("| epochs | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for low, high in zip(edges, edges[1:]):
        if high <= low:
            continue
        phase = [r for r in records if low <= r["epoch"] < high]
        cells = []
        for key in keys:
            values = [r[key] for r in phase if key in r]
            cells.append(f"{np.mean(values):.4g}" if values else "-")
        print(f"| {low + 1}-{high} | " + " | ".join(cells) + " |")
    lags = sorted({r["lag"] for r in records if "lag" in r})
    if lags:
        print("\ncos(r, g_t) by steps since the ascent (all of training):")
        for lag in lags:
            values = [r["cos_r_g"] for r in records if r.get("lag") == lag]
            print(f"  lag {lag}: {np.mean(values):+.4f}")
    final = [r for r in records if "test_accuracy" in r]
    print(
        f"\nfinal: minibatch loss {records[-1]['loss']:.4f} (ln 10 = "
        f"{LN10:.4f}), test {final[-1]['test_accuracy']:.3f}, train "
        f"(clean labels) {records[-1]['train_clean_accuracy']:.3f}"
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", choices=("look", "sam", "base"), default="look"
    )
    parser.add_argument(
        "--reuse-scale",
        choices=("gradient", "stored", "relative"),
        default="gradient",
    )
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument(
        "--optimizer", choices=("adamw", "lamb"), default="adamw"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full-every",
        type=int,
        default=1,
        help="record the reuse steps whose index is a multiple of this "
        "(the full-set measures cost several passes over the data)",
    )
    parser.add_argument("--out", help="a JSON-lines file for the records")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error("needs KERAS_BACKEND=jax")
    print(f"== {vars(args)}", flush=True)
    records = train(args)
    if args.out:
        with open(args.out, "w") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")
    summary(records, args.epochs)
    return records


if __name__ == "__main__":
    main()
