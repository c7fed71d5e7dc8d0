"""Progress lines for long steps: about every tenth of the work, with the rate so far.

``send_orthanc: 250/500 stored, 61 inst/s``. A person watching a task log sees a long step move (or stop) instead
of silence until it ends; the lines name counts only, never a file, patient or study.
"""

from __future__ import annotations

import logging
import threading
import time

#: Progress is logged when another tenth of the work is done.
STEPS = 10


class Progress:
    """Count finished units of a step and log a line each time another tenth of ``total`` is done.

    Thread-safe: send_gcs counts uploads finished by several threads. ``total`` of 0 logs nothing.
    """

    def __init__(self, logger: logging.Logger, step: str, total: int, verb: str, unit: str = "inst"):
        self.log = logger
        self.step = step
        self.total = int(total)
        self.verb = verb
        self.unit = unit
        self.done = 0
        self._next = 1
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        if self.total <= 0:
            return
        with self._lock:
            self.done += n
            # The n-th tenth is reached at ceil(n * total / 10) units; a small total logs at every unit.
            if self.done * STEPS < self._next * self.total:
                return
            while self._next <= STEPS and self.done * STEPS >= self._next * self.total:
                self._next += 1
            done = self.done
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self.log.info("%s: %d/%d %s, %.0f %s/s", self.step, done, self.total, self.verb, done / elapsed, self.unit)
