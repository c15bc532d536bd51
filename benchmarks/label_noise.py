"""Test accuracy under label noise: any presets and options, several seeds.

The regime of `make demo` (and of Foret et al. 2021, Table 4, at small
scale): the demo's ViT on scikit-learn's digits with a fraction of the
training labels replaced by wrong ones, AdamW (or LAMB) with cosine decay
from 2e-3, batch 64. Each run is `METHOD[@OPTIMIZER] [OPTION=VALUE ...]`;
`base` is the optimizer alone. Prints a Markdown table: final test accuracy
on clean labels (mean ± std over the seeds), training accuracy on the noisy
and on the clean labels, final training loss and the step time relative to
the base optimizer's (when the base run is among the runs).

    python benchmarks/label_noise.py --seeds 3 base sam looksam \\
        "looksam reuse_scale=gradient" "looklayersam@lamb" base@lamb
    python benchmarks/label_noise.py --seeds 3 --presets  # every preset

Honours `KERAS_BACKEND` (JAX is the fastest on CPU). `--noise 0` trains on
clean labels.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from keras_sam import PRESETS  # noqa: E402
from keras_sam.demo import noisy_digits as demo  # noqa: E402


def parse_run(text: str) -> tuple[str | None, str, dict]:
    """`"looksam@lamb k=2 reuse_scale=stored"` -> `("looksam", "lamb",
    {"k": 2, "reuse_scale": "stored"})`; `base` is method `None`."""
    head, *pairs = text.split()
    method, _, optimizer = head.partition("@")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return (None if method == "base" else method), optimizer or "adamw", options


def every_preset() -> list[str]:
    """Every preset with only its `method`, each after its base optimizer."""
    runs = ["base"] + [m for m in PRESETS if m not in demo.LAMB_METHODS]
    runs += ["base@lamb"] + [f"{m}@lamb" for m in demo.LAMB_METHODS]
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="METHOD[@OPTIMIZER] [K=V ...]")
    parser.add_argument(
        "--presets",
        action="store_true",
        help="every preset with its defaults, against its base optimizer "
        "(LAMB for those in the demo's LAMB_METHODS, else AdamW)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the seeds are first-seed, first-seed + 1, ... (a seed is the "
        "same run on every backend and in every process)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--model", choices=("vit", "mixer"), default="vit")
    args = parser.parse_args(argv)
    if args.presets:
        args.runs += every_preset()
    if not args.runs:
        parser.error("give runs, or --presets")
    print(
        f"== label noise {args.noise:.0%}: {args.model}, {args.epochs} epochs, "
        f"seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
        f"backend={keras.backend.backend()} "
        f"keras={keras.__version__} machine={platform.machine()} "
        f"cpus={os.cpu_count()}",
        flush=True,
    )
    results = {run: [] for run in args.runs}
    start = time.time()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        data = demo.noisy_digits(args.noise, seed)
        for run in args.runs:
            method, optimizer, options = parse_run(run)
            result = demo.train(
                data,
                method,
                options,
                optimizer=optimizer,
                epochs=args.epochs,
                seed=seed,
                model_kind=args.model,
                verbose=0,
            )
            # A kept model keeps its compiled step: a JAX process that had
            # kept about 40 of them crashed in XLA's CPU code.
            del result["model"]
            results[run].append(result)
            print(
                f"  seed {seed} {run}: test {result['accuracy']:.3f} "
                f"train(noisy) {result['train_noisy']:.3f} "
                f"loss {result['history']['loss'][-1]:.4f} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
    print()
    print(
        "| run | test accuracy | train acc. (noisy labels) | train acc. "
        "(clean labels) | final loss | step / base |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for run, rs in results.items():
        _, optimizer, _ = parse_run(run)
        base = results.get(
            "base" if optimizer == "adamw" else f"base@{optimizer}"
        )
        ratio = "-"
        if base:
            ratios = [
                r["step_seconds"] / b["step_seconds"] for r, b in zip(rs, base)
            ]
            ratio = f"{statistics.median(ratios):.2f}"
        print(
            f"| `{run}` | {demo.mean_std(r['accuracy'] for r in rs)} "
            f"| {demo.mean_std(r['train_noisy'] for r in rs)} "
            f"| {demo.mean_std(r['train_clean'] for r in rs)} "
            f"| {demo.mean_std(r['history']['loss'][-1] for r in rs)} "
            f"| {ratio} |"
        )
    return results


if __name__ == "__main__":
    main()
