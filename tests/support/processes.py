"""Fresh Python processes, for tests that need another backend or devices
configured before the backend starts, and several processes at once: the
hosts of a multi-process run (`run_ranks`)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

# tests/support (the scripts that tests run as subprocesses), tests/ (on
# every subprocess's PYTHONPATH, `environment`: there `support` imports as
# a package, as under pytest) and the repository.
SUPPORT = pathlib.Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent

# Time limits of subprocesses, in seconds, are this many times what a
# loaded 2-core machine needs: `KERAS_SAM_TEST_TIMEOUT_SCALE=2` doubles them
# on a slower one. A limit that runs out fails the results the subprocess
# did not reach, not the others (`Results`).
TIMEOUT_SCALE = float(os.environ.get("KERAS_SAM_TEST_TIMEOUT_SCALE", 1))
RANKS_TIMEOUT = 300 * TIMEOUT_SCALE


def environment(backend: str | None = None, xla_flags: str = "") -> dict:
    """This process's environment with the `support` package importable,
    TensorFlow's logs quiet, `KERAS_BACKEND=backend` if given and
    `xla_flags` appended to `XLA_FLAGS`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def run_python(
    args: list, backend: str | None = None, xla_flags: str = "", timeout=600
) -> str:
    """Runs `python *args` in `environment(backend, xla_flags)`, asserts that
    it succeeded and returns its standard output."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        env=environment(backend, xla_flags),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that are free on localhost now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def jax_cluster(ranks: int, **extra) -> Callable[[int], dict]:
    """`run_ranks`'s `rank_environment` for a JAX job of `ranks` processes:
    rank r's variables for `keras.distribution.initialize()` (a coordinator
    on a free port), with `extra`."""
    address = f"localhost:{free_ports(1)[0]}"
    return lambda rank: {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": address,
        "KERAS_DISTRIBUTION_NUM_PROCESSES": str(ranks),
        "KERAS_DISTRIBUTION_PROCESS_ID": str(rank),
        **extra,
    }


def _kill(process: subprocess.Popen) -> None:
    """Kills `process` and everything it started (its own session)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _failure(outcome: str, codes: list, logs: list) -> str:
    lines = [f"{outcome}; exit codes by rank: {codes}"]
    for rank, (stdout, stderr) in enumerate(logs):
        lines += [
            f"---- rank {rank} stdout (last 2000 characters) ----",
            stdout[-2000:],
            f"---- rank {rank} stderr (last 4000 characters) ----",
            stderr[-4000:],
        ]
    return "\n".join(lines)


def run_ranks(
    args: list,
    rank_environment: Callable[[int], dict],
    ranks: int = 2,
    backend: str | None = None,
    xla_flags: str = "",
    timeout: float = RANKS_TIMEOUT,
    killed_ok: bool = False,
) -> list[str]:
    """Runs `python *args` as `ranks` processes at once (the hosts of a
    multi-process run), rank r with `rank_environment(r)` added to
    `environment(backend, xla_flags)`, and returns each rank's standard
    output.

    When one rank fails, or the time runs out, every rank still running is
    killed (a rank left waiting in a collective would otherwise hang) and
    the test fails with every rank's output. With `killed_ok`, a run whose
    ranks all ended well or by SIGKILL (a preemption the test made) returns
    instead: the SIGKILL-ed rank's peers are killed too, as a cluster
    scheduler ends a job that lost a host.
    """
    with tempfile.TemporaryDirectory() as logs:
        log = pathlib.Path(logs)
        processes = []
        for rank in range(ranks):
            env = environment(backend, xla_flags) | rank_environment(rank)
            processes.append(
                subprocess.Popen(
                    [sys.executable, *map(str, args)],
                    env=env,
                    stdout=open(log / f"{rank}.out", "w"),
                    stderr=open(log / f"{rank}.err", "w"),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        outcome = _wait(processes, timeout)
        # How each rank ended by itself (None: still running, killed now).
        codes = [p.poll() for p in processes]
        for process in processes:
            _kill(process)
        texts = [
            ((log / f"{r}.out").read_text(), (log / f"{r}.err").read_text())
            for r in range(ranks)
        ]
    preempted = killed_ok and all(
        c in (None, 0, -signal.SIGKILL) for c in codes
    )
    if outcome != "done" and not (outcome == "failed" and preempted):
        raise AssertionError(_failure(outcome, codes, texts))
    return [stdout for stdout, _ in texts]


def _wait(processes: list, timeout: float) -> str:
    """ "done" once every process exits with 0, "failed" as soon as one
    exits otherwise, or "timed out after ..."."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in processes]
        if any(code not in (None, 0) for code in codes):
            return "failed"
        if all(code == 0 for code in codes):
            return "done"
        time.sleep(0.1)
    return f"timed out after {timeout:.0f} s"


class SavedResults(dict):
    """A script's results, written to `path` (.npz) after every entry, so
    that a run cut short (a crash, a time limit on a slow machine) keeps
    everything it finished."""

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)

    def __setitem__(self, key: str, value) -> None:
        super().__setitem__(key, value)
        partial = self.path.with_name(f"partial-{self.path.name}")
        np.savez(partial, **self)
        os.replace(partial, self.path)


class Results(dict):
    """What a script saved (`SavedResults`), read by tests: a result the
    script did not reach fails the test that asks for it with the reason
    the script stopped, and no other."""

    def __init__(self, path, stopped: str = ""):
        super().__init__(dict(np.load(path)) if path.exists() else {})
        self.stopped = stopped

    def __missing__(self, key: str):
        raise AssertionError(f"no result {key!r}: {self.stopped}")


def run_script(script, out, timeout: float, **kwargs) -> Results:
    """Runs `python script out` (`run_python`'s other arguments as
    `kwargs`) and returns the results it saved in `out`, those of a failed
    or timed-out run included."""
    try:
        run_python([script, out], timeout=timeout, **kwargs)
        return Results(out)
    except subprocess.TimeoutExpired:
        return Results(out, f"{script.name} timed out after {timeout:.0f} s")
    except AssertionError as e:
        return Results(out, f"{script.name} failed:\n{e}")
