"""Progress lines of long steps: about every tenth of the work, counts and rate only."""

from __future__ import annotations

import logging
import re
import threading

from dicom_relay.progress import Progress

LINE = re.compile(r"^send_orthanc: (\d+)/500 stored, \d+ inst/s$")


def test_a_500_instance_send_logs_ten_lines_at_each_tenth(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    progress = Progress(logging.getLogger("test.progress"), "send_orthanc", 500, "stored")
    for _ in range(500):
        progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(50, 501, 50))


def test_small_totals_and_jumps_log_once_per_tenth_reached(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    log = logging.getLogger("test.progress")
    three = Progress(log, "send_gcs", 3, "uploaded")
    for _ in range(3):
        three.advance()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "send_gcs: 1/3 uploaded", "send_gcs: 2/3 uploaded", "send_gcs: 3/3 uploaded"]
    caplog.clear()
    jump = Progress(log, "send_orthanc", 100, "stored")
    jump.advance(95)  # e.g. what Orthanc held already
    jump.advance(0)
    jump.advance(5)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["send_orthanc: 95/100 stored",
                                                                        "send_orthanc: 100/100 stored"]
    caplog.clear()
    Progress(log, "send_gcs", 0, "uploaded").advance()
    assert not caplog.records


def test_threads_counting_together_log_each_tenth_once(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    progress = Progress(logging.getLogger("test.progress"), "send_gcs", 800, "uploaded")

    def work():
        for _ in range(100):
            progress.advance()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert progress.done == 800
    assert len(caplog.records) == 10
