"""Prints the interop summary line at the end of a run that included interop tests."""

from __future__ import annotations

import pytest

from tests.interop import summary


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for note in summary.NOTES:
        terminalreporter.write_line(note)
    text = summary.line()
    if text is not None:
        terminalreporter.write_line(text)
