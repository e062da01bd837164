"""The browser harness never lets CI pass by not running browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent
ONE_BROWSER_TEST = "tests/browser/test_login.py::test_it_shows_an_error_for_a_wrong_password"


def run_without_chromium(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KLAROS_CHROMIUM": str(tmp_path / "no-chromium-here"),
        # Its own throwaway database, so it never touches the outer run's test database.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'harness.sqlite3'}",
        **extra,
    }
    env.pop("CI", None)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", ONE_BROWSER_TEST, "-q", "-p", "no:cacheprovider", "-rsf"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_browser_tests_skip_locally_when_chromium_is_missing(tmp_path):
    result = run_without_chromium(tmp_path)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "Chromium is not installed" in result.stdout


def test_browser_tests_fail_under_ci_when_chromium_is_missing(tmp_path):
    result = run_without_chromium(tmp_path, CI="true")

    assert result.returncode != 0
    assert "skipped" not in result.stdout
    assert "CI=true but browser tests cannot run" in result.stdout
