"""The harness of the multi-process tests (`processes.py`): every rank's
output comes back, a failing or hanging rank takes the others down with it
and shows every log, and a script cut short keeps what it finished."""

import signal
import time

import pytest
from support.processes import run_ranks, run_script

RANK = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
print("rank", rank, "of", os.environ["WORLD"])
action = sys.argv[rank + 1]
if action == "fail":
    sys.exit("rank failed on purpose")
if action == "hang":
    time.sleep(600)
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _ranks(*actions, **kwargs) -> list[str]:
    return run_ranks(
        ["-c", RANK, *actions],
        lambda rank: {"RANK": str(rank), "WORLD": str(len(actions))},
        ranks=len(actions),
        **kwargs,
    )


def test_every_rank_runs_with_its_own_environment():
    assert _ranks("ok", "ok", "ok") == [f"rank {r} of 3\n" for r in range(3)]


def test_a_failing_rank_ends_the_others_and_shows_every_log():
    start = time.monotonic()
    with pytest.raises(AssertionError) as error:
        _ranks("hang", "fail")
    assert time.monotonic() - start < 60  # not the hanging rank's 600 s
    message = str(error.value)
    assert "exit codes by rank: [None, 1]" in message
    assert "rank 0 of 2" in message and "rank 1 of 2" in message
    assert "rank failed on purpose" in message


def test_the_time_limit_ends_every_rank():
    with pytest.raises(AssertionError, match="timed out after 3 s"):
        _ranks("hang", "ok", timeout=3)


def test_a_preempted_rank_ends_its_peers_and_is_accepted_when_expected():
    assert _ranks("kill", "hang", killed_ok=True)[1] == "rank 1 of 2\n"
    with pytest.raises(AssertionError, match=f"\\[{-signal.SIGKILL}, None\\]"):
        _ranks("kill", "hang")


SCRIPT = """
import sys
from support.processes import SavedResults
out = SavedResults(sys.argv[1])
out["first"] = 1.0
sys.exit("stopped after the first result")
"""


def test_a_script_cut_short_keeps_its_results(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    results = run_script(script, tmp_path / "out.npz", timeout=120)
    assert results["first"] == 1.0
    with pytest.raises(AssertionError, match="stopped after the first"):
        results["second"]
