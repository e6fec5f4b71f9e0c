"""Tests of lckd_med.utils.progress: bars on a terminal, quiet in CI, in pipes and when asked."""

from __future__ import annotations

import io

import pytest

from lckd_med.utils.progress import PROGRESS_ENV, progress_bar, progress_enabled


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "requested, env, tty, expected",
    [
        (True, {}, True, True),
        (True, {}, False, False),  # piped into a log file
        (False, {}, True, False),  # the caller's switch wins
        (True, {"CI": "true"}, True, False),
        (True, {"CI": "1"}, True, False),
        (True, {"CI": "false"}, True, True),
        (True, {PROGRESS_ENV: "0"}, True, False),
        (True, {PROGRESS_ENV: "1"}, False, True),  # forced on even into a pipe
        (True, {PROGRESS_ENV: "1", "CI": "true"}, False, True),
        (False, {PROGRESS_ENV: "1"}, True, False),
    ],
)
def test_progress_enabled(monkeypatch, requested, env, tty, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    stream = _Tty() if tty else io.StringIO()
    assert progress_enabled(requested, stream=stream) is expected


def test_progress_bar_counts_and_is_quiet_off_terminal(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    bar = progress_bar(range(5), desc="cases")
    assert list(bar) == [0, 1, 2, 3, 4] and bar.disable
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(PROGRESS_ENV, "1")
    with progress_bar(desc="cases", total=3) as bar:
        bar.update(3)
    err = capsys.readouterr().err
    assert "cases" in err and "3/3" in err
