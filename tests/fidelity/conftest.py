"""The fidelity tests print their numbers at the end of every pytest run (also without -s)."""

from __future__ import annotations

REPORT: list[str] = []  # lines the tests append; shown in the terminal summary


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("real-encoder fidelity")
        for line in REPORT:
            terminalreporter.write_line(line)
