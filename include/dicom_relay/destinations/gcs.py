"""Upload de-identified instances to a Google Cloud Storage bucket, create-only, and verify them by CRC32C.

Object layout (every path component is pseudonymous or a de-identified UID, never an original identifier)::

    <prefix>/<patient pseudonym>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

``prefix`` defaults to ``studies``. The UIDs are those of the de-identified instance (remapped by
``deid.remap_uid``), so an object name maps one-to-one onto a DICOM instance: resending the same instance
targets the same object.

Objects are never overwritten. Each upload is conditional on the object not existing (``ifGenerationMatch=0``);
when it exists, its checksums decide: the same bytes are a completed earlier upload (``skipped``), different
bytes are a ``DestinationConflict`` that waits for a person. The same rule makes the library's retries safe: a
retried upload that had in fact succeeded meets its own object and is reported as skipped.

Checksums: each upload declares the file's CRC32C, which GCS checks against the bytes it received (it refuses the
upload when they differ), and GCS's answer must carry the same CRC32C for what it stored. CRC32C is the checksum
GCS recommends and keeps for every object (composite objects have no MD5); computing it costs 0.06 ms per 514 KiB
instance against 0.69 ms for MD5, measured, which was a fifth of the client's CPU per upload. The MD5 the relay
records (``gcs_md5``, the manifests) is the one GCS reports for the object, so a later check (``verify``) compares
GCS with GCS's own earlier answer. MD5 is computed here only where it decides something: when an object of the
same name already exists and the two must be compared byte for byte.

``STORAGE_EMULATOR_HOST`` (fake-gcs-server in ``make run`` and the tests) is honoured by google-cloud-storage
itself; with it set, the client uses anonymous credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Mapping, NamedTuple

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from dicom_relay.destinations.errors import DestinationConflict, DestinationRejected, DestinationUnavailable
from dicom_relay.destinations.http import read_environment_once

log = logging.getLogger(__name__)

DICOM_CONTENT_TYPE = "application/dicom"
JSON_CONTENT_TYPE = "application/json"

# google-cloud-storage sends files up to this size in one multipart request and larger ones as resumable
# uploads. fake-gcs-server drops ifGenerationMatch when it finalizes a resumable upload
# (fsouza/fake-gcs-server#1967), so above this size the object is looked up before uploading as well.
MULTIPART_LIMIT = 8 * 1024 * 1024

_READ_CHUNK = 1024 * 1024

# Errors that mean "GCS is not reachable or not answering now"; retried by the library until the deadline.
_UNAVAILABLE = (
    api_exceptions.RetryError,
    api_exceptions.ServerError,
    api_exceptions.TooManyRequests,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class UploadResult:
    """``skipped``: the object already held these exact bytes (an earlier upload), nothing was sent.
    ``verified``: GCS itself confirmed the bytes (in its answer to the upload or to a lookup).
    ``md5_b64``: the MD5 GCS reports for the object (None where GCS keeps none)."""

    object_name: str
    md5_b64: str | None
    skipped: bool
    crc32c_b64: str | None = None
    verified: bool = False


class StoredObject(NamedTuple):
    name: str
    md5_b64: str | None
    metadata: dict[str, str]


def crc32c_of(data: bytes) -> str:
    """CRC32C of ``data``, base64-encoded as GCS reports it (``crc32c``)."""
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def md5_of(data: bytes) -> str:
    """MD5 of ``data``, base64-encoded as GCS reports it (``md5Hash``)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def file_checksums(path: Path, *, md5: bool = True) -> tuple[str | None, str]:
    """MD5 (None with ``md5=False``) and CRC32C of a file read in chunks (for files too large to hold in memory),
    as GCS reports them."""
    digests = [google_crc32c.Checksum()] + ([hashlib.md5(usedforsecurity=False)] if md5 else [])
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            for d in digests:
                d.update(chunk)
    crc, *rest = (base64.b64encode(d.digest()).decode() for d in digests)
    return (rest[0] if rest else None), crc


def _component(label: str, value: str) -> str:
    value = str(value)
    if not value or "/" in value or value in (".", "..") or any(ord(c) < 32 for c in value):
        # Say which component is wrong, not what it contains.
        raise ValueError(f"object name component {label} is empty or contains '/', '.', '..' or a control character")
    return value


class GcsDestination:
    """A GCS bucket as a destination. The client is created on first use (and may be passed in)."""

    def __init__(
        self,
        bucket: str,
        project: str,
        prefix: str = "studies",
        client=None,
        retry_deadline: float = 60.0,
        request_timeout: float = 60.0,
        emulator_host: str = "",
        credentials_file: str = "",
    ):
        self.bucket_name = bucket
        self.emulator_host = emulator_host
        self.credentials_file = credentials_file
        self.project = project
        self.prefix = prefix.strip("/")
        self._client = client
        self.retry_deadline = float(retry_deadline)
        # (connect, read) seconds for each HTTP request; the retry deadline bounds the whole operation.
        self.request_timeout = (min(10.0, float(request_timeout)), float(request_timeout))
        self._retry = DEFAULT_RETRY.with_timeout(self.retry_deadline)

    def __repr__(self) -> str:
        return f"GcsDestination(bucket={self.bucket_name}, prefix={self.prefix})"

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "GcsDestination":
        # How long the client library keeps retrying one request (5xx, dropped connections): RELAY_GCS_RETRY_SECONDS.
        # This is the only retry layer inside the task for GCS; Airflow's task retries come after it.
        kwargs.setdefault("retry_deadline", settings.gcs_retry_seconds)
        return cls(bucket=settings.gcs_bucket, project=settings.gcs_project, prefix=settings.gcs_prefix,
                   emulator_host=settings.gcs_emulator_host, credentials_file=settings.gcs_credentials_file, **kwargs)

    # ---- client ------------------------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            from google.cloud import storage

            emulator = self.emulator_host or os.environ.get("STORAGE_EMULATOR_HOST", "")
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                self._client = storage.Client(project=self.project, credentials=AnonymousCredentials(),
                                              client_options={"api_endpoint": emulator})
            elif self.credentials_file:
                self._client = storage.Client.from_service_account_json(self.credentials_file, project=self.project)
            else:
                self._client = storage.Client(project=self.project)
            read_environment_once(self._client._http, self._client._connection.get_api_base_url_for_mtls())
        return self._client

    @property
    def bucket(self):
        return self.client.bucket(self.bucket_name)

    def _where(self, object_name: str | None = None) -> str:
        return f"gs://{self.bucket_name}/{object_name}" if object_name else f"gs://{self.bucket_name}"

    def _translate(self, exc: Exception, doing: str, object_name: str | None = None) -> Exception:
        """Map a client exception onto the relay's transient / permanent families."""
        where = self._where(object_name)
        if isinstance(exc, _UNAVAILABLE):
            return DestinationUnavailable(
                f"GCS unavailable while {doing} {where} "
                f"(gave up after {self.retry_deadline:.0f}s): {type(exc).__name__}"
            )
        if isinstance(exc, (api_exceptions.Unauthorized, api_exceptions.Forbidden)):
            return DestinationRejected(f"GCS refused the credentials while {doing} {where} (HTTP {exc.code})")
        if isinstance(exc, api_exceptions.NotFound):
            return DestinationRejected(f"GCS bucket gs://{self.bucket_name} does not exist (while {doing} {where})")
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            return DestinationRejected(f"GCS answered HTTP {exc.code} while {doing} {where}")
        return DestinationUnavailable(f"GCS failed while {doing} {where}: {type(exc).__name__}")

    # ---- naming ------------------------------------------------------------------------------------------------

    def object_name(self, patient_pseudonym: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """``<prefix>/<patient pseudonym>/<study UID>/<series UID>/<SOP instance UID>.dcm`` (see module doc)."""
        parts = [
            _component("patient_pseudonym", patient_pseudonym),
            _component("study_uid", study_uid),
            _component("series_uid", series_uid),
            _component("sop_uid", sop_uid) + ".dcm",
        ]
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    # ---- upload ------------------------------------------------------------------------------------------------

    def upload(self, path: Path, object_name: str, metadata: Mapping[str, str]) -> UploadResult:
        """Create ``object_name`` from ``path`` unless it exists; never overwrite.

        Returns ``skipped=True`` when the object already holds the same bytes (same MD5, or same CRC32C and size
        where GCS keeps no MD5). Raises ``DestinationConflict`` when it holds different bytes,
        ``DestinationUnavailable`` when GCS did not answer within ``retry_deadline`` or did not confirm the file's
        CRC32C, ``DestinationRejected`` for credentials / missing bucket. ``md5_b64`` of the result is the MD5 GCS
        reports for the object.
        """
        path = Path(path)
        # Each file is read once and hashed once. A file up to MULTIPART_LIMIT (every single-frame image) is held in
        # memory and sent from there; a larger one is hashed in chunks and streamed from disk by the client.
        # The MD5 only matters when an object of this name exists already (rare): computed then, from what is at
        # hand (the bytes in memory, or the file read once more).
        size = path.stat().st_size
        if size <= MULTIPART_LIMIT:
            data = path.read_bytes()
            crc = crc32c_of(data)
            content_md5 = lambda: md5_of(data)  # noqa: E731
        else:
            data = None
            _, crc = file_checksums(path, md5=False)
            content_md5 = lambda: file_checksums(path)[0]  # noqa: E731
            existing = self._existing(object_name, size, crc, content_md5)
            if existing is not None:
                return existing

        for _ in range(2):  # a second round only if the object vanished between the 412 and the lookup
            blob = self.bucket.blob(object_name)
            blob.metadata = {str(k): str(v) for k, v in metadata.items()}
            # The CRC32C travels in the object resource of the upload request: GCS compares it with the bytes it
            # received and refuses the upload (HTTP 400) when they differ. checksum=None because the client's own
            # checksum="crc32c" would hash the same bytes a second time only to put the same value there.
            blob.crc32c = crc
            try:
                if data is not None:
                    blob.upload_from_string(
                        data, content_type=DICOM_CONTENT_TYPE, if_generation_match=0, checksum=None,
                        retry=self._retry, timeout=self.request_timeout,
                    )
                else:
                    blob.upload_from_filename(
                        str(path), content_type=DICOM_CONTENT_TYPE, if_generation_match=0, checksum=None,
                        retry=self._retry, timeout=self.request_timeout,
                    )
            except api_exceptions.PreconditionFailed:
                existing = self._existing(object_name, size, crc, content_md5)
                if existing is not None:
                    return existing
                continue
            except api_exceptions.BadRequest as exc:
                if any(word in str(exc).lower() for word in ("md5", "crc32c", "hash", "checksum")):
                    # GCS received other bytes than the ones hashed here (damaged in transit, or the file changed
                    # while it was read): nothing was stored; a resend may well succeed.
                    raise DestinationUnavailable(
                        f"GCS refused {self._where(object_name)}: the bytes it received do not have this file's "
                        "checksums; resend") from None
                raise self._translate(exc, "uploading to", object_name) from None
            except Exception as exc:  # noqa: BLE001 - translated into the relay's error families
                raise self._translate(exc, "uploading to", object_name) from None
            # Verification: the object resource GCS answers the upload with carries the checksums of what it stored
            # (blob's properties are replaced by that answer); its CRC32C must be that of the bytes read here. This
            # replaces a second request (reading the object's metadata back) per object.
            if blob.crc32c != crc:
                raise DestinationUnavailable(
                    f"GCS did not confirm {self._where(object_name)} with this file's CRC32C; resend")
            return UploadResult(object_name, blob.md5_hash, skipped=False, crc32c_b64=crc, verified=True)
        raise DestinationUnavailable(f"{self._where(object_name)} exists and vanishes repeatedly; retry later")

    def _existing(self, object_name: str, size: int, crc: str, content_md5: Callable[[], str]
                  ) -> UploadResult | None:
        """``None`` if the object does not exist; ``skipped`` if it holds these bytes; else DestinationConflict.

        The same bytes: the same MD5 (``content_md5()``, computed only now, the rare case of an object already
        there), or, for an object GCS keeps no MD5 of (a composite object), the same CRC32C and size."""
        try:
            blob = self.bucket.get_blob(object_name, retry=self._retry, timeout=self.request_timeout)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "reading", object_name) from None
        if blob is None:
            return None
        if blob.md5_hash is not None:
            same = blob.md5_hash == content_md5()
        else:
            same = blob.crc32c == crc and blob.size == size
        if same:
            log.debug("gcs: %s already holds these bytes; skipped", object_name)
            return UploadResult(object_name, blob.md5_hash, skipped=True, crc32c_b64=crc, verified=True)
        raise DestinationConflict(
            f"{self._where(object_name)} already exists with different content (CRC32C {blob.crc32c}, "
            f"this file {crc}); it is never overwritten"
        )

    # ---- verification and listing ------------------------------------------------------------------------------

    def verify(self, object_name: str, md5_b64: str) -> bool:
        """Re-read the object's metadata from GCS: does it exist with this MD5?"""
        blob = self.bucket.blob(object_name)
        try:
            blob.reload(retry=self._retry, timeout=self.request_timeout)
        except api_exceptions.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "verifying", object_name) from None
        return blob.md5_hash == md5_b64

    def write_manifest(self, object_name: str, manifest: Mapping) -> UploadResult:
        """Write a JSON document (e.g. a study's manifest). Unlike instances, a manifest is replaced on rewrite."""
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        blob = self.bucket.blob(object_name)
        try:
            # Rewriting the same manifest is idempotent, so retrying the unconditional write is safe.
            blob.upload_from_string(
                data, content_type=JSON_CONTENT_TYPE, checksum="md5", retry=self._retry, timeout=self.request_timeout
            )
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "writing manifest", object_name) from None
        return UploadResult(object_name, md5_of(data), skipped=False)

    def list_objects(self, prefix: str | None = None) -> list[StoredObject]:
        """Objects under ``prefix`` (the destination's prefix by default), sorted by name."""
        prefix = self.prefix + "/" if prefix is None and self.prefix else prefix
        try:
            blobs = list(
                self.client.list_blobs(self.bucket_name, prefix=prefix, retry=self._retry, timeout=self.request_timeout)
            )
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "listing", None) from None
        return sorted(StoredObject(b.name, b.md5_hash, dict(b.metadata or {})) for b in blobs)

    def ping(self) -> bool:
        """Whether the bucket can be read."""
        try:
            return self.bucket.exists(retry=None, timeout=self.request_timeout)
        except Exception:  # noqa: BLE001
            return False
