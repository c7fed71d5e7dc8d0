"""What storing a batch of files in Orthanc reports, whatever the transport: one outcome per file.

Shared by the two transports of ``dicom_relay.destinations.orthanc`` (``dicom``: C-STORE; ``rest``: ``POST
/instances`` in ``orthanc_rest``), so that the pipeline reads the same report from either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one file.

    ``status`` is the C-STORE response status (transport ``dicom``) and ``http_status`` the HTTP status of
    Orthanc's answer to ``POST /instances`` (transport ``rest``); both are ``None`` when no answer was received
    for the file (it could not be read, or was never offered). ``reason`` says, PHI-free, why it was not stored
    (or qualifies a stored outcome: a C-STORE Warning, an Orthanc ``AlreadyStored``).
    """

    path: Path
    stored: bool
    status: int | None = None
    reason: str | None = None
    http_status: int | None = None

    def describe(self) -> str:
        """A line that is safe to log: the basename (a de-identified SOP Instance UID) and the status."""
        if self.http_status is not None:
            code = f"HTTP {self.http_status}"
        elif self.status is not None:
            code = f"status 0x{self.status:04X}"
        else:
            code = "no status"
        return f"{self.path.name}: {code}" + (f" ({self.reason})" if self.reason else "")


@dataclass
class StoreReport:
    """The outcome of storing a batch, one ``InstanceOutcome`` per path in the order given.

    ``transport`` is ``dicom`` or ``rest``; ``associations`` counts the DICOM associations used (``dicom``),
    ``workers`` the threads that sent ``POST /instances`` side by side (``rest``)."""

    outcomes: list[InstanceOutcome] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    associations: int = 0
    transport: str = "dicom"
    workers: int = 0

    @property
    def stored(self) -> list[InstanceOutcome]:
        return [o for o in self.outcomes if o.stored]

    @property
    def failed(self) -> list[InstanceOutcome]:
        return [o for o in self.outcomes if not o.stored]

    @property
    def stored_count(self) -> int:
        return len(self.stored)

    @property
    def failed_count(self) -> int:
        return len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure_messages(self) -> list[str]:
        """One PHI-free line per instance that was not stored (basename, status, reason)."""
        return [o.describe() for o in self.failed]

    def summary(self) -> dict:
        """Small and PHI-free: suitable for XCom and the batch status."""
        return {
            "transport": self.transport,
            "stored": self.stored_count,
            "failed": self.failed_count,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "failures": self.failure_messages(),
        }
