"""`compress search-worker` mistakes: one line and exit 2, never a traceback, never a password."""
from __future__ import annotations

import importlib.util

import optuna
import pytest

from compressor.cli import main


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["search-worker", *args, "--no-progress"])
    return code, capsys.readouterr().err


def test_a_storage_that_is_neither_url_nor_journal(capsys):
    code, err = _run(capsys, "--storage", "bogus", "--study", "s")
    assert code == 2 and "neither an Optuna URL" in err and "Traceback" not in err


def test_no_study_within_the_wait_names_the_driving_command(capsys, tmp_path):
    journal = tmp_path / "study.journal"
    code, err = _run(capsys, "--storage", str(journal), "--study", "digits", "--wait", "0.5")
    assert code == 2
    assert f"no study 'digits' appeared in {journal}" in err
    assert f"--storage {journal} --study digits" in err


def test_a_study_no_compress_run_started_is_refused(capsys, tmp_path):
    journal = tmp_path / "study.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="other", storage=storage).set_user_attr("signature", {})
    code, err = _run(capsys, "--storage", str(journal), "--study", "other", "--wait", "5")
    assert code == 2 and "was not started by a compress run" in err


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None,
                    reason="no PostgreSQL driver installed (the postgres extra)")
def test_an_unreachable_database_is_one_line_with_the_password_masked(capsys):
    code, err = _run(capsys, "--storage", "postgresql://user:s3cret@127.0.0.1:1/optuna", "--study", "s")
    assert code == 2
    assert "cannot reach the search study's database postgresql://user:***@127.0.0.1:1/optuna" in err
    assert "s3cret" not in err and "Traceback" not in err
