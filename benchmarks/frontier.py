"""The cost-benefit frontier: what each method buys of SAM's gain per unit of
extra step cost.

Two measurements per run (`METHOD [OPTION=VALUE ...]`, as in
label_noise.py; `base` is AdamW alone):

- **cost**: the step time relative to the base optimizer's on the demo's
  ViT (digits, batch 64, AdamW with the demo's schedule), epochs of the two
  interleaved in one process, the median of `--rounds` rounds. A run with
  two kinds of steps (ascents, and the reuse or plain steps between them)
  is also timed with each kind alone (`k=1` and a `k` it never reaches;
  `ascent_probability` 1 and 0), and a late-phase run's cost is its mean
  over the run, `(1 - f) c_before + f c_method`, from the timed costs of
  its two phases.
- **gain**: the test accuracy under 30% label noise (the demo's task, 30
  epochs) minus the base optimizer's, mean over `--seeds` seeds, and the
  share of `sam`'s gain that it keeps.

Each measurement is a JSON line in `--results` (an interrupted sweep
resumes; runs on several backends combine into one table):

    for b in jax tensorflow; do
        KERAS_BACKEND=$b python benchmarks/frontier.py --results f.jsonl
    done
    python benchmarks/frontier.py --table f.jsonl --plot frontier.png

The costs want a quiet machine; the accuracies can run one process per core
(`--only accuracy`, `--first-seed`), the costs after them (`--only cost`).
`--quick` (the smoke test): 2 epochs, 1 seed, 1 round.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from label_noise import parse_run  # noqa: E402

from keras_sam import PRESETS, SAMModel  # noqa: E402
from keras_sam.demo import noisy_digits as demo  # noqa: E402

RUNS = (
    "base",
    "sam",
    "samon",
    "asam",
    "fisher",
    "fsam",
    "fasam",
    "layersam",
    "nusam",
    "nusam_norm",
    "gsam",
    "wsam",
    "looksam",
    "samk",
    "msam",
    "sam policy=random",
    "sam late_phase=0.25",
)
NEVER = 10**9  # a period or start no run reaches: one kind of step only


def phases(run: str) -> dict[str, str]:
    """The runs that time each kind of step of `run` alone: `"ascent"` and
    `"other"` (reuse or plain steps); `{}` for a run of one kind."""
    method, _, options = parse_run(run)
    if method is None:
        return {}
    if "late_phase" in options:
        rest = " ".join(
            w for w in run.split() if not w.startswith("late_phase=")
        )
        return {"ascent": rest, "other": f"{rest} start_step={NEVER}"}
    if options.get("policy") == "random":
        return {
            "ascent": f"{run} ascent_probability=1.0",
            "other": f"{run} ascent_probability=0.0",
        }
    if options.get("reuse", PRESETS[method].values.get("reuse")):
        return {"ascent": f"{run} k=1", "other": f"{run} k={NEVER}"}
    return {}


def trainer(run: str, steps: int) -> keras.Model:
    """The demo's ViT (seed 0) for `run`, compiled as the demo compiles it
    for a run of `steps` steps."""
    method, _, options = parse_run(run)
    model = demo.make_model("vit", 0)
    if method is not None:
        model = SAMModel(model, method=method, **options)
    model.compile(
        optimizer=demo.base_optimizer("adamw", steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _epoch_seconds(model: keras.Model, batches) -> float:
    start = time.perf_counter()
    model.fit(batches, epochs=1, shuffle=False, verbose=0)
    keras.ops.convert_to_numpy(model.optimizer.iterations)  # JAX: dispatched
    return time.perf_counter() - start


def timed_cost(run: str, rounds: int) -> float:
    """`run`'s epoch time over the base optimizer's: the median of `rounds`
    interleaved pairs, after an epoch of each that compiles."""
    (x, y), _ = demo.load_digits()
    batches = demo.Batches(x, y, demo.BATCH_SIZE, 0)
    steps = 100 * len(batches)  # a schedule that stays near its start
    base, model = trainer("base", steps), trainer(run, steps)
    for m in (base, model):
        _epoch_seconds(m, batches)
    ratios = []
    for _ in range(rounds):
        t_base = _epoch_seconds(base, batches)
        ratios.append(_epoch_seconds(model, batches) / t_base)
    return statistics.median(ratios)


def accuracy(run: str, seed: int, epochs: int) -> float:
    """The final test accuracy of `run` on the demo's task, `seed`."""
    method, optimizer, options = parse_run(run)
    data = demo.noisy_digits(0.3, seed)
    result = demo.train(
        data, method, options, optimizer, epochs, seed, "vit", verbose=0
    )
    return float(result["accuracy"])


def _load(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def measure(runs, args) -> None:
    """Every missing measurement of `runs` on this backend, appended to
    `args.results` as it comes."""
    path, backend = pathlib.Path(args.results), keras.backend.backend()
    done = {
        (r["kind"], r["run"], r.get("seed"))
        for r in _load(path)
        if r["backend"] == backend
    }

    def record(kind: str, run: str, value: float, seed=None) -> None:
        line = {"kind": kind, "backend": backend, "run": run, "seed": seed}
        with path.open("a") as f:
            f.write(json.dumps({**line, "value": value}) + "\n")
        done.add((kind, run, seed))
        print(f"  {backend} {kind} {run} seed={seed}: {value:.3f}", flush=True)

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for run in runs:
        timed_runs = [run, *phases(run).values()]
        for timed in timed_runs if args.only != "accuracy" else ():
            late = "late_phase" in parse_run(timed)[2]
            if timed == "base" or late or ("cost", timed, None) in done:
                continue
            record("cost", timed, timed_cost(timed, args.rounds))
        for seed in seeds if args.only != "cost" else ():
            if ("accuracy", run, seed) not in done:
                record("accuracy", run, accuracy(run, seed, args.epochs), seed)


def costs_and_accuracies(records: list[dict], backend: str) -> tuple:
    costs = {
        r["run"]: r["value"]
        for r in records
        if r["backend"] == backend and r["kind"] == "cost"
    }
    accuracies: dict[str, list] = {}
    for r in records:
        if r["backend"] == backend and r["kind"] == "accuracy":
            accuracies.setdefault(r["run"], []).append(r["value"])
    return costs, accuracies


def cost_of(run: str, costs: dict) -> float | None:
    """`run`'s cost: timed, or a late-phase run's mean over its phases."""
    if run == "base":
        return 1.0
    fraction = parse_run(run)[2].get("late_phase")
    if fraction is None:
        return costs.get(run)
    parts = phases(run)
    ascent, other = costs.get(parts["ascent"]), costs.get(parts["other"])
    if ascent is None or other is None:
        return None
    return (1 - fraction) * other + fraction * ascent


def points(records: list[dict], backend: str) -> dict[str, tuple]:
    """`run -> (cost, gain, std)`: the gain over the base optimizer in
    points of accuracy (mean over seeds) and its std over seeds."""
    costs, accuracies = costs_and_accuracies(records, backend)
    base = accuracies.get("base")
    out = {}
    for run, values in accuracies.items():
        cost = cost_of(run, costs)
        if cost is None or not base:
            continue
        gain = 100 * (np.mean(values) - np.mean(base))
        out[run] = (cost, gain, 100 * np.std(values))
    return out


def front(pts: dict[str, tuple]) -> set[str]:
    """The runs no other run beats on both cost and gain (the Pareto
    front)."""
    return {
        run
        for run, (c, g, _) in pts.items()
        if not any(
            (c2 <= c and g2 >= g) and (c2 < c or g2 > g)
            for other, (c2, g2, _) in pts.items()
            if other != run
        )
    }


def table(records: list[dict]) -> None:
    backends = sorted({r["backend"] for r in records})
    per = {b: points(records, b) for b in backends}
    runs = [r for r in RUNS if any(r in per[b] for b in backends)]
    runs += sorted({r for b in backends for r in per[b]} - set(runs))
    head = "| run |" + "".join(
        f" cost ({b}) | gain ({b}) | share of sam's ({b}) |" for b in backends
    )
    print(head + " on the front |")
    print("| --- " * (1 + 3 * len(backends)) + "| --- |")
    for run in runs:
        cells, fronts = [], []
        for b in backends:
            p = per[b].get(run)
            sam = per[b].get("sam")
            if p is None:
                cells += ["-"] * 3
                continue
            share = "-" if not sam or run == "base" else f"{p[1] / sam[1]:.0%}"
            cells += [f"{p[0]:.2f}x", f"{p[1]:+.1f} ± {p[2]:.1f}", share]
            if run in front(per[b]):
                fronts.append(b)
        print(
            f"| `{run}` | "
            + " | ".join(cells)
            + f" | {', '.join(fronts) or '-'} |"
        )
    print()
    print("| run | backend | ascent step | other step | whole run |")
    print("| --- | --- | --- | --- | --- |")
    for b in backends:
        costs, _ = costs_and_accuracies(records, b)
        for run in runs:
            parts = phases(run)
            if parts and all(p in costs for p in parts.values()):
                whole = cost_of(run, costs)
                print(
                    f"| `{run}` | {b} | {costs[parts['ascent']]:.2f}x "
                    f"| {costs[parts['other']]:.2f}x | "
                    + ("-" if whole is None else f"{whole:.2f}x")
                    + " |"
                )


def plot(records: list[dict], path: str, backend: str = "jax") -> None:
    """Gain against cost on `backend`, the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    pts = points(records, backend)
    on = front(pts)
    for run, (c, g, s) in pts.items():
        color = "C0" if run in on else "C7"
        ax.errorbar(c, g, yerr=s, fmt="o", color=color, markersize=6)
        ax.annotate(
            run, (c, g), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    line = sorted((pts[r][0], pts[r][1]) for r in on)
    ax.step(
        *zip(*line), where="post", color="C0", alpha=0.5, label="Pareto front"
    )
    if "sam" in pts:
        ax.axhline(
            0.8 * pts["sam"][1],
            color="C3",
            ls=":",
            lw=1,
            label="80% of sam's gain",
        )
    ax.axvline(1.10, color="C2", ls="--", lw=1, label="1.10x the base step")
    ax.set_xlabel(
        "step time / base optimizer's step (median of interleaved epochs)"
    )
    ax.set_ylabel("test accuracy gain over AdamW (points, 30% label noise)")
    ax.set_title(
        f"What each method buys per unit of cost (demo ViT, {backend})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="METHOD [K=V ...]")
    parser.add_argument("--results", default="frontier.jsonl")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--only",
        choices=("cost", "accuracy"),
        help="one measurement: the costs want a quiet machine, the "
        "accuracies can share it (one process per core)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", nargs="+", metavar="FILE")
    parser.add_argument("--plot", metavar="PNG")
    args = parser.parse_args(argv)
    if args.table:
        records = [r for f in args.table for r in _load(pathlib.Path(f))]
        table(records)
        if args.plot:
            plot(records, args.plot)
        return
    if args.quick:
        args.seeds, args.epochs, args.rounds = 1, 2, 1
    print(
        f"== frontier: backend {keras.backend.backend()}, seeds {args.seeds}, "
        f"epochs {args.epochs}, rounds {args.rounds}",
        flush=True,
    )
    measure(args.runs or RUNS, args)
    records = _load(pathlib.Path(args.results))
    table(records)


if __name__ == "__main__":
    main()
