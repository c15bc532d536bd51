"""Trajectories to compare across backends.

`python cross_backend.py OUT.npz` (with KERAS_BACKEND set) saves the
trajectories of every case; `test_cross_backend` runs it for the two other
backends and compares with its own.
"""

from __future__ import annotations

import pathlib
import sys

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np

CASES = {
    "sam": dict(method="sam", rho=0.1),
    "looklayersam": dict(method="looklayersam", rho=0.05, k=2),
    "fasam_on_norm": dict(method="fasam", rho=0.2, perturb="norm"),
    "fisher_every_k": dict(method="fisher", rho=0.1, reuse="every_k", k=2),
}
STEPS = 6


def trajectories() -> dict[str, np.ndarray]:
    """For each case, the flat weights after every step."""
    from keras_sam import SAMModel
    from support.helpers import compile_sgd, reference_mlp
    from support.reference import init_params, make_batches

    x, y = make_batches(n_batches=STEPS)
    out = {}
    for name, options in CASES.items():
        model = reference_mlp(init_params())
        sam = SAMModel(model, **options)
        compile_sgd(sam)
        steps = []
        for step in range(STEPS):
            sam.train_on_batch(x[step].astype("float32"), y[step])
            steps.append(
                np.concatenate([w.ravel() for w in model.get_weights()])
            )
        out[name] = np.stack(steps)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **trajectories())
