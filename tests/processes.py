"""Fresh Python processes, for tests that need another backend or devices
configured before the backend starts."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def environment(backend: str | None = None, xla_flags: str = "") -> dict:
    """This process's environment with the tests importable, TensorFlow's
    logs quiet, `KERAS_BACKEND=backend` if given and `xla_flags` appended to
    `XLA_FLAGS`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
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
