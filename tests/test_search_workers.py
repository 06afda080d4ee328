"""Search workers on one real PostgreSQL study: `compress --storage ... --study NAME` drives,
`compress search-worker` processes score trials beside it, and a worker killed mid-trial loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres_server import postgres_server, unavailable_reason

from compressor.search.study import open_storage

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]

FAST = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--no-progress"]
TRIALS = 10


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def _compress(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compressor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            cwd=Path(__file__).parent)  # tiny_models importable for the teacher


def _finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _drive(teacher: Path, url: str, study: str, out: Path, profile: str, *extra: str,
           env=None) -> subprocess.Popen:
    return _compress("--teacher", str(teacher), "--budget", "10s", "--profile", profile, "--storage", url,
                     "--study", study, "--trials", str(TRIALS), "--spaces", "cnn", "--out", str(out), *FAST,
                     *extra, env=env)


def _worker(url: str, study: str, env=None) -> subprocess.Popen:
    return _compress("search-worker", "--storage", url, "--study", study, "--no-progress", "--wait", "300",
                     env=env)


def _finished(trials) -> list:
    return [t for t in trials if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)]


def test_workers_score_a_shared_study_and_a_killed_process_loses_no_trial(
        tiny_teacher_files, predicted_profile, postgres_url, tmp_path):
    """In three steps, each deterministic: (1) the driving run and one worker are both killed in the
    middle of their first trial; (2) two workers started together finish the search alone, scoring
    the dead processes' candidates again once their heartbeats stop; (3) the driving run resumes,
    finds the study full and goes on to distillation with the workers' trials."""
    study, run = "shared", tmp_path / "run"
    fast_heartbeat = {"COMPRESSOR_STUDY_HEARTBEAT_S": "1", "COMPRESSOR_STUDY_GRACE_S": "3"}
    kill_mid_trial = {**fast_heartbeat, "COMPRESSOR_CRASH_AT": "scoring@1"}
    doomed = _worker(postgres_url, study, env=kill_mid_trial)  # started first: it waits for the study
    driver = _drive(tiny_teacher_files["torchscript"], postgres_url, study, run, predicted_profile,
                    env=kill_mid_trial)
    assert _finish(driver)[0] == -9 and _finish(doomed)[0] == -9

    workers = [_worker(postgres_url, study, env=fast_heartbeat) for _ in range(2)]
    for code, out, err in (_finish(w) for w in workers):
        assert code == 0, err[-3000:]
        assert f"of study '{study}'; it holds {TRIALS} of {TRIALS}" in out

    store, _ = open_storage(postgres_url, tmp_path)  # postgresql:// opened with psycopg 3, as the CLI does
    trials = optuna.load_study(study_name=study, storage=store).get_trials()
    finished = _finished(trials)
    assert len(finished) == TRIALS  # exactly the trial count, all workers together: none lost, none extra
    assert not any(t.state == TrialState.RUNNING for t in trials)
    scored = [t for t in trials if t.state == TrialState.COMPLETE]
    archs = [json.dumps(t.user_attrs["arch"], sort_keys=True) for t in scored]
    assert len(set(archs)) == len(archs), "two workers scored the same candidate"
    dead = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs]
    assert len(dead) == 2  # the driver's first trial and the doomed worker's
    for t in dead:  # each dead process's candidate was queued again (a retry may itself die) and scored
        retried = [r for r in scored if t.number in r.system_attrs.get("retry_history", ())]
        assert len(retried) == 1, f"trial {t.number}'s candidate was not scored again"
        assert retried[0].user_attrs["arch"] == t.user_attrs["arch"]
    assert len(Counter(t.user_attrs["worker"] for t in finished)) <= 2  # only the two live workers scored

    resumed = _drive(tiny_teacher_files["torchscript"], postgres_url, study, run, predicted_profile,
                     "--resume", env=fast_heartbeat)
    code, _, err = _finish(resumed)
    assert code == 0, err[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["search"]["n_trials"] == TRIALS and manifest["search"]["study_name"] == study
    assert manifest["search"]["student"]["trial_number"] in {t.number for t in scored}
