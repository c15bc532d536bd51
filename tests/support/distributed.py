"""What the distributed tests train: the presets that cover every option
(and compositions: a delayed start with F-SAM and LookSAM; AE-LookSAM,
whose policy keeps state) on the reference MLP, through `fit`."""

from __future__ import annotations

import numpy as np

from keras_sam import SAMModel
from support.golden import CASES as GOLDEN
from support.helpers import COVERING_PRESETS, compile_sgd, reference_mlp
from support.reference import (
    Reference,
    init_params,
    make_batches,
    step_per_replica,
)

# The cases that train with `ascent="per_replica"`: JAX's on 4 devices
# (and `batch_splits=4` on one), TensorFlow's on 2 replicas. One per branch
# that the per-replica ascent takes in the step (`step.gather`, `descend`,
# `global_g_v`): `sam` each replica's own ascent; `samon` perturbs a subset
# of the SAM gradient's variables; `fsam` all-reduces the perturbed gradient
# for its EMA; `looksam` the whole gradient, and sums `g_v` over the
# replicas; `nusam` the weight matrices' rank-one ascent; `gsam` each
# replica decomposes its own gradient; `wsam` all-reduces its decoupled
# term; `aelooksam` the policy's norm of the global gradient. The other
# presets add no branch there: a geometry (ASAM, Fisher, LayerSAM, their
# friendly and Look- compositions) is the same function of the replica's
# own direction as of the global one, SAM-k's and the delayed start's
# steps are LookSAM's conditional without its state, nuSAM-norm is nuSAM
# normalized. MSAM has no per-replica ascent: its look-ahead follows the
# one global momentum (a ValueError, test_options.py).
PER_REPLICA_CASES = (
    "sam",
    "samon",
    "fsam",
    "looksam",
    "nusam",
    "gsam",
    "wsam",
    "aelooksam",
)
# The cases trained with the global ascent: the presets that between them
# set every option a preset sets (`COVERING_PRESETS`: every kind of SAM
# state, both conditionals, both descents, the look-ahead), `sam`, the
# per-replica cases, and the compositions with a state or schedule of their
# own (a delayed start with F-SAM and LookSAM; AE-LookSAM's statistics).
# ASAM's and LayerSAM's geometries train here inside F-ASAM and
# Look-LayerSAM; every preset follows the reference on one device
# (test_golden.py).
CASES = {
    name: GOLDEN[name]
    for name in dict.fromkeys(
        ("sam", *COVERING_PRESETS, *PER_REPLICA_CASES, "look_fsam_delayed")
    )
}
# The cases that TensorFlow also trains on one device with XLA
# (`jit_compile=True`, what a TPU runs), one per kind of step that compiles
# differently: `sam` the every-step ascent (two passes, no conditional);
# `looksam` the traced conditional between an ascent and a reuse, with
# state in both branches; `nusam` the power iterations inside pass 1's
# backward pass (`probes.py`); `gsam` the descent rule after the
# conditional; `wsam` the decoupled term applied after the optimizer's
# step; `msam` the one pass at the look-ahead; `fsam` the EMA of the
# gradients. The other cases compose the same operations (a geometry is
# elementwise algebra and norms, as `sam`'s; a policy or a delayed start
# is `looksam`'s conditional on another flag), and every case follows the
# reference on one device without XLA (test_golden.py).
XLA_CASES = ("sam", "looksam", "nusam", "gsam", "wsam", "msam", "fsam")
# TensorFlow's 2 replicas with each batch split in 2 (m = 16 / 4).
SPLIT_CASES = ("sam", "looksam", "nusam", "gsam")
STEPS, BATCH = 6, 16
# Models trained one after the other in one process, each under a strategy
# (or distribution) of its own: a plain Keras model is "plain".
SEQUENCE = ("plain", "sam", "looksam", "fsam", "nusam", "plain")


def sequence_ascent(i: int) -> str:
    """The `ascent` of model `i` of `SEQUENCE` under TensorFlow's strategies:
    the two alternate, so that one sequence has both."""
    return ("global", "per_replica")[i % 2]


def batches():
    x, y = make_batches(n_batches=STEPS, batch=BATCH)
    return x.astype("float32"), y


def train(name: str, return_model: bool = False, jit_compile="auto", **options):
    """The flat weights after `STEPS` steps of `fit` (in the current
    strategy or distribution scope); `name="plain"` trains the model without
    SAM."""
    x, y = batches()
    sam = reference_mlp(init_params())
    if name != "plain":
        sam = SAMModel(sam, **CASES[name][0], **options)
    compile_sgd(sam, jit_compile=jit_compile)
    sam.fit(
        x.reshape(-1, x.shape[-1]),
        y.reshape(-1),
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
    )
    model = sam if name == "plain" else sam.inner
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    return (weights, sam) if return_model else weights


def reference(name: str, replicas: int | None = None) -> np.ndarray:
    """The NumPy reference's flat weights after the same steps: `ascent`
    global (`replicas=None`) or per replica."""
    from support.helpers import LR

    ref = Reference(CASES[name][1], init_params(), LR)
    x, y = batches()
    for step in range(STEPS):
        if replicas is None:
            ref.step(x[step], y[step])
        else:
            step_per_replica(ref, x[step], y[step], replicas)
    return ref.theta
