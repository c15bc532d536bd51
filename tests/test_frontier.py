"""benchmarks/frontier.py: how it splits a run's steps, combines a late
phase's cost, finds the Pareto front and prints its tables (the measured
numbers are in docs/benchmarks.md, never asserted)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import keras
import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/frontier.py"


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(PATH.parent))
    spec = importlib.util.spec_from_file_location("frontier", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_kind_of_step_is_timed_alone(frontier):
    never = frontier.NEVER
    assert frontier.phases("sam") == {}
    assert frontier.phases("msam") == {}
    assert frontier.phases("looksam") == {
        "ascent": "looksam k=1",
        "other": f"looksam k={never}",
    }
    assert frontier.phases("sam policy=random") == {
        "ascent": "sam policy=random ascent_probability=1.0",
        "other": "sam policy=random ascent_probability=0.0",
    }
    assert frontier.phases("asam late_phase=0.25") == {
        "ascent": "asam",
        "other": f"asam start_step={never}",
    }


def test_a_late_phase_costs_its_phases_mean(frontier):
    costs = {"sam": 2.0, f"sam start_step={frontier.NEVER}": 1.0}
    assert frontier.cost_of("sam late_phase=0.25", costs) == 1.25
    assert frontier.cost_of("sam late_phase=0.25", {"sam": 2.0}) is None
    assert frontier.cost_of("base", {}) == 1.0


def test_the_front_holds_the_runs_nothing_beats(frontier):
    points = {
        "base": (1.0, 0.0, 0),
        "sam": (2.0, 10.0, 0),
        "cheap": (1.1, 9.0, 0),
        "worse": (1.5, 8.0, 0),  # beaten by cheap on both
        "tied": (2.0, 10.0, 0),  # as good as sam, no better
    }
    assert frontier.front(points) == {"base", "sam", "cheap", "tied"}


def test_table_from_results(frontier, tmp_path, capsys):
    records = [
        {
            "kind": "accuracy",
            "backend": "jax",
            "run": run,
            "seed": s,
            "value": v,
        }
        for run, values in {
            "base": (0.70, 0.72),
            "sam": (0.80, 0.82),
            "msam": (0.79, 0.81),
        }.items()
        for s, v in enumerate(values)
    ] + [
        {"kind": "cost", "backend": "jax", "run": run, "seed": None, "value": c}
        for run, c in (("sam", 2.0), ("msam", 1.05))
    ]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    frontier.main(["--table", str(path)])
    out = capsys.readouterr().out
    assert "| `msam` | 1.05x | +9.0 ± 1.0 | 90% | jax |" in out
    assert "| `sam` | 2.00x | +10.0 ± 1.0 | 100% | jax |" in out


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the measurements do not depend on the backend's code paths "
    "beyond fit; one quick run on JAX (the fastest here) keeps the suite's "
    "budget",
)
def test_a_quick_sweep_measures_and_prints(
    frontier, tmp_path, capsys, few_digits
):
    results = tmp_path / "f.jsonl"
    frontier.main(["--quick", "--results", str(results), "base", "msam"])
    lines = results.read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert sorted(kinds) == ["accuracy", "accuracy", "cost"]
    assert "| `msam` |" in capsys.readouterr().out
