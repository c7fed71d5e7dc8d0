"""The relay's own status database goes away in the middle of a batch: the step fails (Airflow retries it),
nothing is lost or sent twice, and when PostgreSQL is back the batch completes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from dicom_relay import pipeline
from dicom_relay.config import Settings
from dicom_relay.status import StatusStore
from tests.support.samples import generate_ct_study
from tests.support.stack.postgres import start_postgres

from .helpers import STEPS, claim_one, delivery, digests

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres():
    """A cluster of this test's own: stopping it must not disturb the session's database."""
    handle = start_postgres(Path(tempfile.mkdtemp(prefix="relay-pg-down-")), durable=False)
    StatusStore(handle.url("relay")).migrate()
    yield handle
    handle.stop()


def test_status_database_down_mid_batch_then_back(own_postgres, make_relay_env, tmp_path, orthanc, gcs_emulator,
                                                  gcs_bucket, figures):
    settings = Settings.from_env(make_relay_env(RELAY_DB_URL=own_postgres.url("relay")))
    study = generate_ct_study(tmp_path / "src", patient_id="MRN-FAULT-PG", n_instances=6, rows=32, columns=32)
    batch_id = claim_one(settings, study.folder, "ACC-FAULT-PG")
    for step in STEPS[:3]:
        step(batch_id, settings)
    incoming = settings.batches_dir / batch_id / "incoming"
    before = digests(incoming)

    port = own_postgres.port
    own_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        pipeline.send_orthanc(batch_id, settings)
    figures.fault("status database down mid-batch", 1)
    assert digests(incoming) == before  # nothing lost while the database was away

    # PostgreSQL comes back (same data, same port): Airflow's retry of the step, then the rest of the run.
    back = start_postgres(Path(own_postgres.process.run_dir), port=port, durable=False)
    own_postgres.process = back.process
    for step in STEPS[3:]:
        step(batch_id, settings)
    d = delivery(settings.db_url, batch_id, study, orthanc.url, (orthanc.user, orthanc.password),
                 gcs_emulator.host, gcs_bucket)
    figures.delivered(d.expected, d.found_both, d.extra)
    assert d.complete, d
