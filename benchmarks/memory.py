"""Peak host memory of a training step: base optimizer vs SAM vs nuSAM.

Each (backend, method) runs in its own process: build a wide MLP (>= 50M
parameters), compile with plain SGD (no optimizer state, so the SAM state and
transients stand out), take one warm-up step (tracing, compilation, first
allocations), reset the kernel's peak-RSS mark (`/proc/self/clear_refs`),
run a few steps and read the peak (`VmHWM`). Each cell is the median of
`--repeats` processes (TensorFlow's executor runs ready ops in a varying
order, so its peak varies from run to run). The table reports each method's
extra peak over the base optimizer as a fraction of the parameter bytes, and
the step-time ratio nuSAM / SAM. Linux only.

    python benchmarks/memory.py                 # all backends
    python benchmarks/memory.py --backends jax  # one
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("base", "sam", "nusam")


def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(
    method: str, width: int, depth: int, batch: int, steps: int, jit: str
):
    """Runs in a child process; prints one JSON line."""
    import keras
    import numpy as np

    from keras_sam import SAMModel

    layers = [keras.Input((width,))]
    layers += [
        keras.layers.Dense(width, activation="relu") for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    trainer = model if method == "base" else SAMModel(model, method=method)
    trainer.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[jit],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, width)).astype("float32")
    y = rng.integers(0, 10, size=batch)
    trainer.train_on_batch(x, y)  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / steps
    print(
        json.dumps(
            {
                "params": model.count_params(),
                "rss_before": before,
                "peak": _status("VmHWM"),
                "step_seconds": seconds,
            }
        )
    )


def run(backend: str, method: str, args) -> dict:
    """The median peak and step time of `args.repeats` processes."""
    runs = [run_once(backend, method, args) for _ in range(args.repeats)]
    return {
        key: statistics.median(r[key] for r in runs)
        for key in ("params", "peak", "step_seconds")
    }


def run_once(backend: str, method: str, args) -> dict:
    # A fixed mmap threshold: every large block is its own mapping, returned
    # to the system when freed, so the peak RSS is the peak of live memory
    # rather than of glibc's heap (whose threshold otherwise grows after
    # large frees, leaving freed blocks resident).
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        MALLOC_MMAP_THRESHOLD_="131072",
    )
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--jit-compile",
        args.jit_compile,
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{backend}/{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="compile(jit_compile=...); 'auto' is Keras' default",
    )
    parser.add_argument("--worker", choices=METHODS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            args.width,
            args.depth,
            args.batch,
            args.steps,
            args.jit_compile,
        )
        return
    print(
        f"MLP {args.depth} x Dense({args.width}), batch {args.batch}, SGD, "
        f"jit_compile={args.jit_compile}; "
        "peak RSS over the steady-state steps, one process per cell"
    )
    print(
        f"{'backend':<12}{'params':>8}{'base peak':>11}{'SAM extra':>11}"
        f"{'nuSAM extra':>13}{'nuSAM/SAM time':>16}"
    )
    for backend in args.backends.split(","):
        r = {m: run(backend, m, args) for m in METHODS}
        param_bytes = 4 * r["base"]["params"]
        extra = {
            m: (r[m]["peak"] - r["base"]["peak"]) / param_bytes for m in METHODS
        }
        print(
            f"{backend:<12}{r['base']['params'] / 1e6:>7.1f}M"
            f"{r['base']['peak'] / 2**20:>9.0f}MB"
            f"{extra['sam']:>10.0%} {extra['nusam']:>12.0%}"
            f"{r['nusam']['step_seconds'] / r['sam']['step_seconds']:>16.2f}"
        )


if __name__ == "__main__":
    main()
