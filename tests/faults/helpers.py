"""What the fault tests check after every fault: nothing lost, nothing done twice, originals untouched."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import requests

from dicom_relay import pipeline
from tests.support.samples import SampleStudy, drop_atomically
from tests.support.stack.gcs import emulator_client
from dicom_relay.status import StatusStore

STEPS = list(pipeline.STEPS.values())


def claim_one(settings, source: Path, name: str) -> str:
    drop_atomically(source, settings.inbox, name)
    runs = pipeline.claim_finished_folders(settings)
    assert len(runs) == 1, runs
    batch_id = runs[0]["conf"]["batch_id"]
    pipeline.mark_dispatched(settings, [batch_id])
    return batch_id


def run_all(batch_id: str, settings, steps=STEPS) -> list[dict]:
    return [step(batch_id, settings) for step in steps]


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by path relative to it."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@dataclass
class Delivery:
    expected: int  # instances planted in the study
    relay_done: int  # instances the status table has DONE
    in_orthanc: int  # de-identified SOP Instance UIDs of the batch that Orthanc holds
    in_bucket: int  # .dcm objects of the batch in the bucket
    found_both: int  # instances verified at both destinations
    extra_orthanc: int  # instances Orthanc holds for the batch's studies beyond the batch's instances
    extra_bucket: int  # objects under the batch's study prefixes beyond the batch's instances

    @property
    def extra(self) -> int:
        return self.extra_orthanc + self.extra_bucket

    @property
    def complete(self) -> bool:
        return self.found_both == self.expected and self.extra == 0 and self.relay_done == self.expected


def orthanc_study_instances(url: str, auth: tuple[str, str], study_uid: str) -> list[str]:
    r = requests.post(f"{url}/tools/find", auth=auth, timeout=30,
                      json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
    r.raise_for_status()
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in r.json()]


def bucket_objects(emulator_host: str, bucket: str, prefix: str) -> list[tuple[str, str | None, dict]]:
    client = emulator_client(emulator_host, "dicom-relay")
    return [(b.name, b.md5_hash, dict(b.metadata or {})) for b in client.list_blobs(bucket, prefix=prefix)]


def delivery(db_url: str, batch_id: str, study: SampleStudy, orthanc_url: str, orthanc_auth: tuple[str, str],
             emulator_host: str, bucket: str, gcs_prefix: str = "studies") -> Delivery:
    """Compare what the batch should have delivered with what Orthanc and the bucket really hold."""
    instances = StatusStore(db_url).instances(batch_id)
    expected = len(study.sop_instance_uids)
    mine = {i.deid_sop_instance_uid: i for i in instances if i.deid_sop_instance_uid}
    in_orthanc: set[str] = set()
    extra_orthanc = 0
    in_bucket: dict[str, str | None] = {}
    extra_bucket = 0
    for study_uid in sorted({i.deid_study_instance_uid for i in instances if i.deid_study_instance_uid}):
        held = orthanc_study_instances(orthanc_url, orthanc_auth, study_uid)
        in_orthanc |= {u for u in held if u in mine}
        extra_orthanc += len(held) - len({u for u in held if u in mine})
        pseudonyms = {i.patient_pseudonym for i in instances if i.deid_study_instance_uid == study_uid}
        for pseudonym in pseudonyms:
            prefix = f"{gcs_prefix}/{pseudonym}/{study_uid}/"
            for name, md5, _ in bucket_objects(emulator_host, bucket, prefix):
                if not name.endswith(".dcm"):
                    continue
                sop = name.rsplit("/", 1)[1][: -len(".dcm")]
                if sop in mine and sop not in in_bucket and mine[sop].gcs_md5 == md5:
                    in_bucket[sop] = md5
                else:
                    extra_bucket += 1
    both = len(in_orthanc & set(in_bucket))
    return Delivery(
        expected=expected,
        relay_done=sum(1 for i in instances if i.state == "DONE"),
        in_orthanc=len(in_orthanc),
        in_bucket=len(in_bucket),
        found_both=both,
        extra_orthanc=extra_orthanc,
        extra_bucket=extra_bucket,
    )
