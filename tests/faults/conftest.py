"""The fault-injection suite's shared record: what was injected and what was observed, printed at the end.

Every test adds what it saw to the session's ``figures`` (faults that demonstrably hit, studies driven through,
instances found at both destinations, instances missing, extra copies, identifiers found where they must not be).
At the end of the session one line is printed and written to ``.run/fault-figures.json``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURES_FILE = REPO / ".run" / "fault-figures.json"


@dataclass
class Figures:
    faults_injected: int = 0
    studies_processed: int = 0
    instances_delivered: int = 0
    instances_lost: int = 0
    duplicates: int = 0
    identifiers_leaked: int | None = None  # None: the leak scan did not run in this session
    faults: list[str] = field(default_factory=list)  # one short label per fault that hit
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fault(self, label: str, hits: int = 1) -> None:
        """Record a fault that was observed to hit (``hits`` > 0: a refused/answered/cut connection, a kill)."""
        assert hits > 0, f"fault {label!r} was injected but never hit: the test would prove nothing"
        with self._lock:
            self.faults_injected += 1
            self.faults.append(label)

    def leaked(self, n: int) -> None:
        with self._lock:
            self.identifiers_leaked = (self.identifiers_leaked or 0) + n

    def delivered(self, expected: int, found_both: int, extra: int) -> None:
        """One study: ``expected`` instances planted, ``found_both`` verified in Orthanc and in the bucket."""
        with self._lock:
            self.studies_processed += 1
            self.instances_delivered += found_both
            self.instances_lost += max(0, expected - found_both)
            self.duplicates += extra

    def line(self) -> str:
        leaked = "not scanned" if self.identifiers_leaked is None else str(self.identifiers_leaked)
        return (
            f"faults injected: {self.faults_injected}, studies processed: {self.studies_processed}, "
            f"instances delivered: {self.instances_delivered}, instances lost: {self.instances_lost}, "
            f"duplicates: {self.duplicates}, identifiers leaked: {leaked}"
        )

    def as_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("faults_injected", "studies_processed", "instances_delivered",
                                           "instances_lost", "duplicates", "identifiers_leaked")}
        d["faults"] = list(self.faults)
        d["line"] = self.line()
        return d


FIGURES = Figures()
_USED = {"yes": False}


@pytest.fixture(scope="session")
def figures() -> Figures:
    _USED["yes"] = True
    return FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _USED["yes"]:
        return
    line = FIGURES.line()
    terminalreporter.write_sep("=", "fault-injection figures")
    terminalreporter.write_line(line)
    try:
        FIGURES_FILE.parent.mkdir(exist_ok=True)
        FIGURES_FILE.write_text(json.dumps(FIGURES.as_json(), indent=2))
    except OSError as exc:  # never fail the session for the figures file
        terminalreporter.write_line(f"(could not write {FIGURES_FILE}: {exc})")
