"""The de-identification engine: PS3.15 Basic Application Level Confidentiality Profile plus options.

Decide, apply, prove: each element's action comes from :func:`dicom_relay.deid.decide.decide` (cached per place
in a :class:`~dicom_relay.deid.decide.Scope`); this module applies it, on a pydicom dataset (:meth:`Deidentifier._walk`)
or on the raw bytes of the header (:meth:`Deidentifier._raw_walk`, see rawpath.py); verify.py proves the result.

How one instance is processed (:meth:`Deidentifier.deidentify_dataset`):

* Only the elements present are visited; elements are not converted from their raw bytes unless their value is
  needed, and pixel data is never decoded.
* Every nested sequence is visited at every depth; its items get the decisions of their place (SOP class,
  enclosing sequences, the mode a D or C sequence puts them in).
* Private elements (odd groups) are removed unless Retain Safe Private is on and the element is safe-listed.
* Curve groups (50xx) and overlay groups (60xx) are removed whole: a curve or overlay bitmap cannot be cleaned
  automatically, and removing only Overlay Data would leave an invalid Overlay Plane module.
* DA/DT/TM values the table does not name are handled by VR (E.1.1 note 4): shifted (Modified Dates), kept
  (Full Dates) or removed.
* Group length elements are removed (retired; they would be wrong after the changes).
* The result is marked (PatientIdentityRemoved, DeidentificationMethod, its code sequence, and
  LongitudinalTemporalInformationModified), the file meta follows the new SOP Instance UID and the preamble is
  zeroed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

# pydicom is imported by the functions of the pydicom path, when a file takes it: the raw path (the common case)
# runs without it, and ``import pydicom`` costs more CPU than de-identifying hundreds of files (see dictionary.py).
from dicom_relay.deid import codes, fastio, rawpath
from dicom_relay.deid.dates import shift_value
from dicom_relay.deid.errors import DeidError
from dicom_relay.deid.decide import (
    ACCESSION, CLEAN, CONCEPT, DATE, DESCEND, DUMMY, EMPTY, KEEP, PATIENT_ID, PATIENT_NAME, PSEUDONYM, REMOVE, UIDS,
    Action, Scope,
)
from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.table import rules_for, safe_private, sop_family
from dicom_relay.deid.text import TextCleaner, cleaned
from dicom_relay.deid.pixels import policy as pixel_policy
from dicom_relay.deid.uids import UidMapper
from dicom_relay.deid.vr import dict_vr
from dicom_relay.deid.verify import Collected, LeakCheck, collect, collect_parsed
from dicom_relay.deid.verify import identifying_values as _identifying_values

if TYPE_CHECKING:
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset

IMAGE_TYPE = 0x00080008
SECONDARY_CAPTURE = pixel_policy.SECONDARY_CAPTURE


def _daemonic() -> bool:
    """Whether this is a daemonic process, which cannot start a pool (multiprocessing: imported only here, where a
    pool is wanted; it brings socket, pickle and selectors, 0.01 CPU-s at every start)."""
    import multiprocessing

    return multiprocessing.current_process().daemon


def _ascii_value(elem) -> str:
    """The value of an ASCII-only VR element (UI, DA, DT, TM) as one string, backslashes kept."""
    from pydicom.dataelem import RawDataElement
    from pydicom.multival import MultiValue

    if isinstance(elem, RawDataElement):
        v = elem.value
        return v.decode("ascii", "replace").rstrip("\x00 ").strip() if v else ""
    v = elem.value
    if v is None:
        return ""
    return "\\".join(str(x) for x in v) if isinstance(v, MultiValue) else str(v)


def _put(d: dict, tag: int, elem, vr: str, text: str | None) -> None:
    """Set an ASCII value; raw elements stay raw (cheap to write, nothing re-encoded). ``None`` = empty."""
    from pydicom.dataelem import DataElement, RawDataElement

    if isinstance(elem, RawDataElement):
        b = text.encode("ascii") if text else b""
        if len(b) & 1:
            b += b"\x00" if vr == "UI" else b" "
        d[tag] = elem._replace(length=len(b), value=b)
    else:
        d[tag] = DataElement(tag, vr, text if text else None)


def _pixel_header(ds: Dataset) -> tuple[str, str, str, str]:
    """BurnedInAnnotation, SOP Class UID, Modality and ImageType (values joined by backslashes) as strings."""
    image_type = ds.get("ImageType", "")
    image_type = image_type if isinstance(image_type, str) else "\\".join(str(v) for v in image_type)
    return (str(ds.get("BurnedInAnnotation", "") or ""), str(ds.get("SOPClassUID", "")),
            str(ds.get("Modality", "") or ""), image_type)


def _read_full(src: Path) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(src, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DeidError(f"input is not a readable DICOM file ({type(exc).__name__})") from None


def _item_values(item: Dataset):
    """``value_of`` for :meth:`Scope.item` on a pydicom item."""

    def value_of(tag: int) -> str:
        elem = item.get(tag)
        return "" if elem is None or elem.value is None else str(elem.value).strip()

    return value_of


def _raw_item_values(buf: bytes, elems: list):
    """``value_of`` for :meth:`Scope.item` on the raw elements of an item."""

    def value_of(tag: int) -> str:
        for el in elems:
            if el.tag == tag:
                return rawpath.ascii_value(buf, el)
        return ""

    return value_of


@lru_cache(maxsize=64)
def _marking_elements(options: DeidOptions, implicit: bool, little: bool) -> dict[int, RawDataElement]:
    """The marking attributes of ``options`` encoded for one transfer syntax encoding, as raw elements."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    m = Dataset()
    m.PatientIdentityRemoved = "YES"
    m.DeidentificationMethod = codes.method_text(options)
    m.DeidentificationMethodCodeSequence = codes.method_code_sequence(options)
    m["DeidentificationMethodCodeSequence"].is_undefined_length = False
    m.LongitudinalTemporalInformationModified = codes.temporal_marker(options)
    out = {}
    for elem in m:
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = implicit, little
        write_data_element(buf, elem)
        raw = buf.getvalue()
        hdr = 8 if implicit or elem.VR not in ("SQ", "OB", "UN", "UT", "UC") else 12
        value = raw[hdr:]
        out[elem.tag] = RawDataElement(elem.tag, None if implicit else elem.VR, len(value), value, 0, implicit, little)
    return out


@lru_cache(maxsize=64)
def _raw_marking(options: DeidOptions, implicit: bool) -> dict[int, bytes]:
    """The marking attributes of :func:`_marking_elements`, encoded without pydicom for the raw path (little
    endian): ``{tag: encoded element}``, the same bytes pydicom writes (the raw/pydicom byte-equality tests)."""
    frame, padded = rawpath.frame, rawpath.padded
    items = [
        (False, [frame(0x00080100, b"SH", padded(code.value, "SH"), implicit),
                 frame(0x00080102, b"SH", padded(code.scheme_designator, "SH"), implicit),
                 frame(0x00080104, b"LO", padded(code.meaning, "LO"), implicit)])
        for code in codes.applied_codes(options)
    ]
    return {
        0x00120062: frame(0x00120062, b"CS", padded("YES", "CS"), implicit),
        0x00120063: frame(0x00120063, b"LO", padded("\\".join(codes.method_text(options)), "LO"), implicit),
        0x00120064: rawpath.encode_sequence(0x00120064, items, False, implicit),
        0x00280303: frame(0x00280303, b"CS", padded(codes.temporal_marker(options), "CS"), implicit),
    }


_POOL_DEIDENTIFIERS: dict = {}


def _pool_deidentifier(key: str, options: DeidOptions) -> Deidentifier:
    """The Deidentifier of a worker process for a key and options (one per process, its caches kept)."""
    d = _POOL_DEIDENTIFIERS.get((key, options))
    if d is None:
        d = _POOL_DEIDENTIFIERS[(key, options)] = Deidentifier(key, options)
    return d


def _pool_job(args):
    """One file in a worker process of :meth:`Deidentifier.deidentify_files` (one Deidentifier per process)."""
    key, options, src, dst_dir, identity, wanted = args
    return _pool_deidentifier(key, options).deidentify_and_collect(src, dst_dir, identity, collect_values=wanted)


def _pool_read_job(args):
    """One file in a worker process of :meth:`Deidentifier.read_and_deidentify_files`."""
    key, options, src, dst_dir, read, wanted = args
    return _read_and_deidentify(_pool_deidentifier(key, options), src, dst_dir, read, wanted)


def _read_and_deidentify(d: Deidentifier, src: Path, dst_dir: Path, read, wanted: bool):
    found, identity, header = read(src)
    if identity is None:
        return found, None, None
    return (found, *d.deidentify_and_collect(src, dst_dir, identity, collect_values=wanted, header=header))


@dataclass(frozen=True)
class PatientIdentity:
    """What the identifier service returned for one patient: pseudonym, day offset, accession pseudonyms."""

    patient_pseudonym: str
    jitter_days: int
    accession_pseudonyms: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the accession map's keys are PHI: keep them out of logs and tracebacks
        return f"PatientIdentity(patient_pseudonym={self.patient_pseudonym!r}, jitter_days=<hidden>, accessions={len(self.accession_pseudonyms)})"


@dataclass(frozen=True)
class DeidResult:
    """The outcome for one instance. UIDs are the new (de-identified) ones; ``path`` is None when held back."""

    path: Path | None
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    quarantine_reason: str | None = None
    #: The pixel stage's record (:class:`dicom_relay.deid.pixels.stage.PixelRecord` as a dict), None when the
    #: instance's pixels were not read.
    pixels: dict | None = None
    #: How many bytes at the start of the output the relay encoded itself (preamble, file meta, every element
    #: before the pixel data); the rest, if any, is the original's pixel elements copied byte for byte. Set by
    #: the raw path only (0: the pydicom path wrote the file, or the instance was held back). Verification uses it
    #: to read back only those bytes (:func:`dicom_relay.deid.verify._encoded_part` says why that misses nothing).
    encoded_length: int = 0


class _File:
    """What the walk of one instance needs besides the decisions: its identity, jitter and text cleaner."""

    __slots__ = ("identity", "jitter", "cleaner")

    def __init__(self, identity: PatientIdentity, cleaner: TextCleaner | None):
        self.identity = identity
        self.jitter = identity.jitter_days
        self.cleaner = cleaner


class Deidentifier:
    """De-identifies instances with one secret key and one option set; safe to reuse for many files."""

    def __init__(self, secret_key: str, options: DeidOptions = DeidOptions()):
        if not isinstance(options, DeidOptions):
            raise DeidError("options must be a DeidOptions")
        self.options = options
        self._rules = rules_for(options)
        self._uid = UidMapper(secret_key)
        self._secret_key = secret_key
        o = options
        self._needs_cleaner = (
            o.clean_descriptors or o.clean_structured_content or o.clean_graphics
            or o.retain_patient_characteristics or o.retain_device_identity
        )
        self._safe = safe_private() if self._rules.private_action == "C" else frozenset()
        # The raw fast path (rawpath.py) covers option sets that need neither a text cleaner nor a safe list.
        self._raw_ok = not self._needs_cleaner and not self._safe
        self._scopes: dict[str, Scope] = {}  # SOP class -> the decisions at the top level of its instances
        self.raw_path_used = 0  # files that took the fast path (for tests and the bench)
        self._pixel_rules = None  # loaded on the first instance whose pixels are read

    # --- public API ---------------------------------------------------------------------------------------
    def _scope(self, sop_class_uid: str) -> Scope:
        family = sop_family(sop_class_uid)
        scope = self._scopes.get(family)
        if scope is None:
            if len(self._scopes) > 256:
                self._scopes.clear()
            scope = self._scopes[family] = Scope(self.options, family)
        return scope

    def remap_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (well-known UIDs unchanged; all UIDs unchanged with Retain UIDs)."""
        return uid if self.options.retain_uids else self._uid(uid)

    def identifying_values(self, ds: Dataset, identity: PatientIdentity | None = None) -> set[str]:
        """Values of the ORIGINAL ``ds`` that must not survive (rule: :mod:`dicom_relay.deid.verify`)."""
        return _identifying_values(ds, self.options, identity)

    def quarantine_reason(self, ds: Dataset) -> str | None:
        """Why ``ds`` must be held back without trying (pixels may show identifying text and the options or the
        pixel policy ``hold`` say so), or None. No PHI in the reason."""
        return self._quarantine(*_pixel_header(ds))

    def pixel_scan_reason(self, burned_in: str, sop_class: str, modality: str, image_type: str) -> str | None:
        """Why the pixels of an instance are read under the options (:mod:`dicom_relay.deid.pixels.policy`)."""
        return pixel_policy.scan_reason(modality, sop_class, burned_in, image_type, scan_all=self.options.pixel_scan_all)

    def _quarantine(self, burned_in: str, sop_class: str, modality: str, image_type: str = "") -> str | None:
        o = self.options
        if o.pixels == pixel_policy.HOLD:
            scan = self.pixel_scan_reason(burned_in, sop_class, modality, image_type)
            if scan is not None:
                return f"pixel policy hold: {scan}"
        if o.quarantine_burned_in and burned_in.strip().upper() == "YES":
            return "BurnedInAnnotation is YES: pixel data may show identifying text"
        if o.quarantine_secondary_capture and sop_class in SECONDARY_CAPTURE:
            return "secondary capture SOP class: pixel data may show identifying text"
        modality = modality.strip().upper()
        if modality and modality in o.quarantine_modalities:
            return f"modality {modality}: pixel data commonly shows identifying text"
        return None

    def deidentify_dataset(self, ds: Dataset, identity: PatientIdentity) -> Dataset:
        """De-identify ``ds`` in place (file meta and preamble included when present) and return it."""
        if not isinstance(identity, PatientIdentity):
            raise DeidError("identity must be a PatientIdentity")
        if not identity.patient_pseudonym:
            raise DeidError("the patient pseudonym is empty")
        cleaner = (
            TextCleaner(_identifying_values(ds, self.options, exclude_kept=False)) if self._needs_cleaner else None
        )
        self._walk(ds, self._scope(str(ds.get("SOPClassUID", ""))), _File(identity, cleaner))
        self._mark(ds, identity)
        self._fix_file_meta(ds)
        return ds

    def deidentify_file(self, src: Path, dst_dir: Path, identity: PatientIdentity) -> DeidResult:
        """De-identify one file into ``dst_dir/<new SOP Instance UID>.dcm``, or hold it back."""
        return self.deidentify_and_collect(src, dst_dir, identity, collect_values=False)[0]

    def deidentify_and_collect(
        self, src: Path, dst_dir: Path, identity: PatientIdentity, *, collect_values: bool = True, header=None
    ) -> tuple[DeidResult, Collected | None]:
        """:meth:`deidentify_file`, and what verification must know of the ORIGINAL (:func:`~dicom_relay.deid.verify.collect`)
        for :meth:`LeakCheck.add_collected`.

        The values are collected from the header the engine has just parsed, so the original is read and parsed
        once; the leak check still reads and searches the written output on its own. When the engine's parse
        cannot serve (the pydicom path, implicit VR, a value with a character set), the file is collected on its
        own, exactly as :meth:`LeakCheck.add` does. ``collect_values=False``: the second item is None.
        ``header``: ``(rawpath.file_key, rawpath.read_file result)`` of ``src`` parsed already (the index's,
        :class:`dicom_relay.dicom_import.KeptHeaders`); used only while the file is unchanged.
        """
        src, dst_dir = Path(src), Path(dst_dir)
        collected = None
        result = None
        if self._raw_ok:
            parsed: list = []
            result = self._deidentify_raw(src, dst_dir, identity, parsed if collect_values else None, header)
            if result is not None:
                self.raw_path_used += 1
                if parsed:
                    collected = collect_parsed(*parsed, self.options, identity)
        if result is None:
            result = self._deidentify_file_pydicom(src, dst_dir, identity)
        if collect_values and collected is None:
            collected = collect(src, self.options, identity)
        return result, collected

    def _deidentify_file_pydicom(self, src: Path, dst_dir: Path, identity: PatientIdentity) -> DeidResult:
        """The reference path: pydicom reads the header, the dataset walk, pydicom-compatible writing."""
        from pydicom.errors import InvalidDicomError

        try:
            header = fastio.read_header(src)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            # ``from None``: the original exception text may contain the path, and folder names are PHI.
            raise DeidError(f"input is not a readable DICOM file ({type(exc).__name__})") from None
        ds = header.ds
        for kw in ("SOPInstanceUID", "SOPClassUID"):
            if not str(ds.get(kw, "") or "").strip():
                raise DeidError(f"input has no {kw}")
        reason = self.quarantine_reason(ds)
        pixels = None
        if reason is None and (header.tail is not None or "PixelData" in ds):
            scan = self.pixel_scan_reason(*_pixel_header(ds))
            if scan is not None:
                if header.tail is not None:  # the pixel data is needed now: read it (only it) into ds
                    try:
                        header = fastio.with_pixels(header, src)
                    except (InvalidDicomError, OSError, ValueError, EOFError, struct.error):
                        header = fastio.Header(_read_full(src), None)
                    ds = header.ds
                pixels = self._clean_pixels(ds, identity, scan)
                if pixels.held:
                    reason = f"pixels: {pixels.reason}"
        if reason is not None:
            return DeidResult(
                None,
                self.remap_uid(str(ds.SOPInstanceUID)),
                self.remap_uid(str(ds.get("SeriesInstanceUID", "") or "")),
                self.remap_uid(str(ds.get("StudyInstanceUID", "") or "")),
                str(ds.SOPClassUID),
                reason,
                None if pixels is None else pixels.to_dict(),
            )
        self.deidentify_dataset(ds, identity)
        if pixels is not None:
            codes.mark_clean_pixels(ds)  # only here: the proof passed
        new_sop = str(ds.SOPInstanceUID)
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{new_sop}.dcm"
        try:
            fastio.write(header, src, dst)
        except (OSError, ValueError, TypeError) as exc:
            raise DeidError(f"could not write the de-identified instance ({type(exc).__name__})") from None
        return DeidResult(
            dst,
            new_sop,
            str(ds.get("SeriesInstanceUID", "") or ""),
            str(ds.get("StudyInstanceUID", "") or ""),
            str(ds.SOPClassUID),
            None,
            None if pixels is None else pixels.to_dict(),
        )

    def _clean_pixels(self, ds: Dataset, identity: PatientIdentity, scan: str):
        """Run the pixel stage on the ORIGINAL ``ds`` (its identifying values are still there to search for)."""
        from dicom_relay.deid.pixels import detect, rules, stage  # OCR and OpenCV: loaded only when needed

        if self._pixel_rules is None:
            self._pixel_rules = rules.load(self.options.pixel_rules or None)
        needles = tuple(detect.needles(ds, _identifying_values(ds, self.options, identity)))
        return stage.clean_instance(ds, policy=self.options.pixels, needles=needles, rules=self._pixel_rules,
                                    scanned_because=scan)

    def deidentify_files(
        self,
        jobs: Iterable[tuple[Path, PatientIdentity]],
        dst_dir: Path,
        *,
        workers: int = 1,
        check: LeakCheck | None = None,
        pool=None,
        headers: list | None = None,
    ) -> list[DeidResult]:
        """:meth:`deidentify_file` for many ``(source, identity)`` pairs; results in input order.

        With ``check``, each original is registered with its output (:meth:`LeakCheck.add`). ``workers`` > 1
        uses a process pool of that many processes (large studies: de-identification is CPU bound and each
        file is independent; UIDs and pseudonyms are keyed, so the output does not depend on the split). The
        first error is raised, as in a loop. In a daemonic process (which cannot have children) it runs here.
        ``pool``: a running ``ProcessPoolExecutor`` of ``workers`` processes to use (and leave running), so that
        the caller's verification can use the same processes. ``headers``: per job, the ``header`` of
        :meth:`deidentify_and_collect` or None (used in this process only: never sent to a pool).
        """
        jobs = [(Path(src), identity) for src, identity in jobs]
        dst_dir = Path(dst_dir)
        pooled = workers > 1 and len(jobs) > workers and not _daemonic()
        if not pooled:
            out = []
            for n, (src, identity) in enumerate(jobs):
                result, collected = self.deidentify_and_collect(src, dst_dir, identity, collect_values=check is not None,
                                                                header=headers[n] if headers else None)
                if check is not None:
                    check.add_collected(collected, result.path, result.encoded_length)
                out.append(result)
            return out
        from concurrent.futures import ProcessPoolExecutor

        args = [(self._secret_key, self.options, src, dst_dir, identity, check is not None) for src, identity in jobs]
        chunksize = max(1, len(args) // (workers * 8))
        own_pool = None
        if pool is None:
            pool = own_pool = ProcessPoolExecutor(workers)
        try:
            out = []
            # Results are registered as they come (in input order), while the workers go on with the next ones.
            for result, collected in pool.map(_pool_job, args, chunksize=chunksize):
                if check is not None:
                    check.add_collected(collected, result.path, result.encoded_length)
                out.append(result)
        finally:
            if own_pool is not None:
                own_pool.shutdown(cancel_futures=True)
        return out

    def read_and_deidentify_files(
        self, sources: Iterable[Path], read, dst_dir: Path, *, workers: int = 1, check: LeakCheck | None = None,
        pool=None,
    ) -> list[tuple[object, DeidResult | None]]:
        """:meth:`deidentify_files` for files the caller reads first, in the same process as their
        de-identification (a worker of the pool): ``read(source) -> (found, identity, header)``, e.g. the
        pipeline's re-reading of each instance with the checks of its import, whose parse the engine then uses
        (``header``, as in :meth:`deidentify_and_collect`). ``identity`` None: the file is not de-identified
        (``found`` says why) and its result is None. ``read`` must pickle (a module-level function, or a
        ``functools.partial`` of one) when ``workers`` > 1. Returns ``(found, result)`` per source, in order.
        """
        sources, dst_dir = [Path(src) for src in sources], Path(dst_dir)
        wanted = check is not None
        if workers > 1 and len(sources) > workers and not _daemonic():
            from concurrent.futures import ProcessPoolExecutor

            own_pool = None
            if pool is None:
                pool = own_pool = ProcessPoolExecutor(workers)
            args = [(self._secret_key, self.options, src, dst_dir, read, wanted) for src in sources]
            done = pool.map(_pool_read_job, args, chunksize=max(1, len(args) // (workers * 8)))
        else:
            own_pool = None
            done = (_read_and_deidentify(self, src, dst_dir, read, wanted) for src in sources)
        try:
            out = []
            # Registered as they come (in input order), while the workers go on with the next ones.
            for found, result, collected in done:
                if check is not None and result is not None:
                    check.add_collected(collected, result.path, result.encoded_length)
                out.append((found, result))
        finally:
            if own_pool is not None:
                own_pool.shutdown(cancel_futures=True)
        return out

    # --- the raw fast path (see rawpath.py) ----------------------------------------------------------------
    def _deidentify_raw(
        self, src: Path, dst_dir: Path, identity: PatientIdentity, parsed: list | None = None, header=None
    ) -> DeidResult | None:
        """De-identify ``src`` on its raw bytes; None when the file needs the pydicom path.

        ``parsed``: a list that receives ``(header bytes, top-level elements)`` of the original once it has been
        written (explicit VR only: verification reads implicit VR files with pydicom's private dictionary).

        Same order of checks as the pydicom path: readable, SOP UIDs present, quarantine, then the identity.
        """
        try:
            fd = os.open(src, os.O_RDONLY)
        except OSError:
            return None  # the pydicom path raises the error
        try:
            try:
                if header is not None and header[0] == rawpath.file_key(os.fstat(fd)):
                    # Parsed by the index, and the file is the same: not read and parsed a second time.
                    buf, meta, _, elems, pixel_at, implicit, size = header[1]
                else:
                    buf, meta, _, elems, pixel_at, implicit, size = rawpath.read_file(fd)
                top = {el.tag: el for el in elems}
                val = lambda tag: rawpath.ascii_value(buf, top[tag]) if tag in top else ""  # noqa: E731
                sop_uid, sop_class = val(rawpath.SOP_INSTANCE), val(rawpath.SOP_CLASS)
                if not sop_uid or not sop_class:
                    raise rawpath.Fallback  # the pydicom path gives the precise error
                burned, modality = val(rawpath.BURNED_IN), val(rawpath.MODALITY)
                if "\\" in burned + modality + sop_class:
                    raise rawpath.Fallback
                image_type = val(IMAGE_TYPE)
                reason = self._quarantine(burned, sop_class, modality, image_type)
                if reason is None and pixel_at >= 0 and self.pixel_scan_reason(burned, sop_class, modality, image_type):
                    raise rawpath.Fallback  # pixels to read and clean: the pydicom path does it
                if reason is not None:
                    return DeidResult(
                        None, self.remap_uid(sop_uid), self.remap_uid(val(rawpath.SERIES_UID)),
                        self.remap_uid(val(rawpath.STUDY_UID)), sop_class, reason,
                    )
                if not isinstance(identity, PatientIdentity):
                    raise DeidError("identity must be a PatientIdentity")
                if not identity.patient_pseudonym:
                    raise DeidError("the patient pseudonym is empty")
                out = dict(self._raw_walk(buf, elems, self._scope(sop_class), _File(identity, None), implicit))
                out.update(_raw_marking(self.options, implicit))
                pseudo = rawpath.padded(identity.patient_pseudonym, "PN")
                for tag, vr in ((PATIENT_NAME, b"PN"), (PATIENT_ID, b"LO")):
                    el = top.get(tag)
                    out[tag] = rawpath.frame(tag, vr if el is None else el.fvr, pseudo, implicit)
                new_sop = rawpath.chunk_value(out[rawpath.SOP_INSTANCE], implicit)
                new_class = rawpath.chunk_value(out[rawpath.SOP_CLASS], implicit)
                get = lambda tag: rawpath.chunk_value(out[tag], implicit) if tag in out else ""  # noqa: E731
                meta_class = meta.get(0x00020002) or new_class
                head = b"".join((
                    b"\0" * 128, b"DICM", rawpath.encode_meta(meta_class, new_sop, meta[0x00020010]),
                    *(out[t] for t in sorted(out)),
                ))
                tail = rawpath.find_tail(fd, pixel_at, size, implicit, buf)
            except (rawpath.Fallback, struct.error, RecursionError, OSError):
                return None  # the pydicom path decides (and raises the precise error, if any)
            dst_dir.mkdir(parents=True, exist_ok=True)
            dst = dst_dir / f"{new_sop}.dcm"
            try:
                rawpath.write_output(dst, head, fd, tail)
            except (OSError, ValueError, TypeError) as exc:
                raise DeidError(f"could not write the de-identified instance ({type(exc).__name__})") from None
            if parsed is not None and not implicit:
                parsed += [buf, elems]
        finally:
            os.close(fd)
        return DeidResult(dst, new_sop, get(rawpath.SERIES_UID), get(rawpath.STUDY_UID), new_class, None,
                          encoded_length=len(head))

    def _raw_walk(self, buf: bytes, elems: list, scope: Scope, f: _File, implicit: bool) -> list[tuple[int, bytes]]:
        """Apply the decisions to raw elements: the (tag, encoded element) pairs of the output, in tag order."""
        out: list[tuple[int, bytes]] = []
        add = out.append
        frame = rawpath.frame
        action = scope.action
        for el in elems:
            tag = el.tag
            op, arg = action(tag, el.vr)
            if op == KEEP:
                add((tag, buf[el.start : el.vend]))
            elif op == REMOVE:
                continue
            elif op == DESCEND:
                walk = self._raw_walk
                if arg.mode == CONCEPT:
                    items = [
                        (undef, [c for _, c in walk(buf, item, arg.item(_raw_item_values(buf, item)), f, implicit)])
                        for undef, item in el.items
                    ]
                else:
                    items = [(undef, [c for _, c in walk(buf, item, arg, f, implicit)]) for undef, item in el.items]
                add((tag, rawpath.encode_sequence(tag, items, el.undef, implicit)))
            elif op == UIDS:
                text = rawpath.ascii_value(buf, el)
                if not text:
                    add((tag, buf[el.start : el.vend]))
                else:
                    new = "\\".join(self._uid(x) for x in text.split("\\"))
                    add((tag, frame(tag, el.fvr, rawpath.padded(new, "UI"), implicit)))
            elif op == DATE:
                text = rawpath.ascii_value(buf, el)
                new = shift_value(el.vr, text, f.jitter) if text else text
                if new == text:
                    add((tag, buf[el.start : el.vend]))
                elif new is not None:
                    add((tag, frame(tag, el.fvr, rawpath.padded(new, el.vr), implicit)))
                elif arg.op == EMPTY:
                    add((tag, frame(tag, el.fvr, b"", implicit)))
                elif arg.op == DUMMY:
                    add((tag, rawpath.encode_new(tag, el.vr, arg.arg, implicit)))
            elif op == EMPTY:
                if el.vr == "SQ":
                    add((tag, rawpath.encode_sequence(tag, [], False, implicit)))
                else:
                    add((tag, frame(tag, el.fvr, b"", implicit)))
            elif op == DUMMY:
                add((tag, rawpath.encode_new(tag, el.vr, arg, implicit)))
            elif op == PSEUDONYM:
                add((tag, frame(tag, el.fvr, rawpath.padded(f.identity.patient_pseudonym, ""), implicit)))
            elif op == ACCESSION:
                new = self._accession(rawpath.text_value(buf, el), f.identity)
                add((tag, frame(tag, el.fvr, rawpath.padded(new, "") if new else b"", implicit)))
            elif op == CLEAN:
                if f.cleaner is not None:
                    raise rawpath.Fallback  # cleaning free text: the pydicom path decodes it (character sets)
                text = rawpath.ascii_text(buf, el)
                new = cleaned(tag, el.vr, text, None) if text else text
                if new == text:
                    add((tag, buf[el.start : el.vend]))
                elif new is not None:  # pragma: no cover - only a cleaner changes a valid value
                    add((tag, frame(tag, el.fvr, rawpath.padded(new, el.vr), implicit)))
                elif arg.op == EMPTY:
                    add((tag, frame(tag, el.fvr, b"", implicit)))
                elif arg.op == DUMMY:
                    add((tag, rawpath.encode_new(tag, el.vr, arg.arg, implicit)))
            else:  # PRIVATE: the safe list needs the creator's name (the pydicom path)
                raise rawpath.Fallback
        return out

    # --- the walk on a pydicom dataset ---------------------------------------------------------------------
    def _walk(self, ds: Dataset, scope: Scope, f: _File) -> None:
        """Apply the decisions to ``ds`` in place, every nested sequence included."""
        from pydicom.dataelem import DataElement, RawDataElement
        from pydicom.sequence import Sequence

        d = ds._dict
        action = scope.action
        had_private = False
        for tag in list(d):
            tag = int(tag)
            elem = d[tag]
            vr = elem.VR
            if vr is None or vr == "UN":
                vr = dict_vr(tag)
            op, arg = action(tag, vr)
            if op == KEEP:
                continue
            if op == REMOVE:
                del d[tag]
            elif op == DESCEND:
                for item in ds[tag].value or ():
                    self._walk(item, arg.item(_item_values(item)) if arg.mode == CONCEPT else arg, f)
            elif op == UIDS:
                text = _ascii_value(elem)
                if text:
                    _put(d, tag, elem, "UI", "\\".join(self._uid(x) for x in text.split("\\")))
            elif op == DATE:
                text = _ascii_value(elem)
                new = shift_value(vr, text, f.jitter) if text else text
                if new == text:
                    pass
                elif new is not None:
                    _put(d, tag, elem, vr, new)
                elif arg.op == EMPTY:
                    _put(d, tag, elem, vr, None)
                elif arg.op == DUMMY:
                    d[tag] = DataElement(tag, vr, arg.arg)
                else:
                    del d[tag]
            elif op == EMPTY:
                if isinstance(elem, RawDataElement) and vr != "SQ":
                    d[tag] = elem._replace(length=0, value=b"")
                else:
                    d[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else None)
            elif op == DUMMY:
                d[tag] = DataElement(tag, vr, arg)
            elif op == PSEUDONYM:
                self._set_text(ds, tag, f.identity.patient_pseudonym)
            elif op == ACCESSION:
                new = self._accession(str(ds[tag].value or ""), f.identity)
                if new:
                    self._set_text(ds, tag, new)
                else:
                    ds[tag].value = None  # stays present and empty (Type 2)
            elif op == CLEAN:
                self._clean(ds, tag, vr, arg, f)
            else:  # PRIVATE
                had_private = True
                self._private(ds, tag)
        if had_private:
            self._drop_orphan_creators(ds)

    @staticmethod
    def _accession(original: str, identity: PatientIdentity) -> str:
        """The pseudonym of an AccessionNumber value; "" for an empty one (it stays present and empty)."""
        original = original.strip()
        if not original:
            return ""
        new = identity.accession_pseudonyms.get(original)
        if not new:
            # Fail closed: an accession number that cannot be replaced must not be sent or silently dropped.
            raise DeidError("AccessionNumber is present but the identity has no pseudonym for it")
        return new

    @staticmethod
    def _set_text(ds: Dataset, tag: int, text: str) -> None:
        from pydicom.dataelem import RawDataElement

        d = ds._dict
        elem = d[tag]
        if isinstance(elem, RawDataElement) and text.isascii():
            # Every DICOM character set is ASCII-compatible, so an ASCII value can be stored as raw bytes.
            _put(d, tag, elem, "", text)
        else:
            ds[tag].value = text

    @staticmethod
    def _clean(ds: Dataset, tag: int, vr: str, on_failure: Action, f: _File) -> None:
        """Action C: the cleaned value if it is valid (:func:`dicom_relay.deid.text.cleaned`), else ``on_failure``."""
        from pydicom.dataelem import DataElement
        from pydicom.multival import MultiValue

        d = ds._dict
        elem = ds[tag]
        v = elem.value
        if v is None or v == "":
            return
        text = "\\".join(str(x) for x in v) if isinstance(v, MultiValue) else str(v)
        new = cleaned(tag, vr, text, f.cleaner)
        if new == text:
            return
        if new is not None:
            elem.value = new
        elif on_failure.op == EMPTY:
            d[tag] = DataElement(tag, vr, None)
        elif on_failure.op == DUMMY:
            d[tag] = DataElement(tag, vr, on_failure.arg)
        else:
            del d[tag]

    def _private(self, ds: Dataset, tag: int) -> None:
        d = ds._dict
        if not self._safe:
            del d[tag]
            return
        element = tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return  # a private creator: kept while its block keeps a safe element (see _drop_orphan_creators)
        if element >= 0x1000:
            group = tag >> 16
            creator = d.get((group << 16) | (element >> 8))
            if creator is not None:
                name = creator.value
                name = name.decode("latin-1") if isinstance(name, bytes) else str(name or "")
                if (name.strip().rstrip("\x00").strip().upper(), group, element & 0xFF) in self._safe:
                    return
        del d[tag]

    def _drop_orphan_creators(self, ds: Dataset) -> None:
        d = ds._dict
        used = {(int(t) >> 16, (int(t) & 0xFFFF) >> 8) for t in d if (int(t) >> 16) & 1 and (int(t) & 0xFFFF) >= 0x1000}
        for t in [t for t in d if (int(t) >> 16) & 1 and 0x10 <= (int(t) & 0xFFFF) <= 0xFF]:
            if (int(t) >> 16, int(t) & 0xFF) not in used:
                del d[t]

    # --- marking and file meta ----------------------------------------------------------------------------
    def _mark(self, ds: Dataset, identity: PatientIdentity) -> None:
        enc = ds.original_encoding if None not in ds.original_encoding else (None, None)
        if None in enc or ds.original_character_set != ds._character_set:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = codes.method_text(self.options)
            ds.DeidentificationMethodCodeSequence = codes.method_code_sequence(self.options)
            ds.LongitudinalTemporalInformationModified = codes.temporal_marker(self.options)
        else:
            # Pre-encoded once per option set and encoding: inserted as raw elements, written as they are.
            ds._dict.update(_marking_elements(self.options, *enc))
        # The Patient module's Type 2 attributes carry the pseudonym even if the original lacked them.
        for tag, kw in ((PATIENT_NAME, "PatientName"), (PATIENT_ID, "PatientID")):
            if tag in ds._dict:
                self._set_text(ds, tag, identity.patient_pseudonym)
            else:
                setattr(ds, kw, identity.patient_pseudonym)

    def _fix_file_meta(self, ds: Dataset) -> None:
        from pydicom.dataelem import DataElement
        from pydicom.dataset import FileMetaDataset
        from pydicom.tag import Tag
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

        if hasattr(ds, "preamble") and ds.preamble is not None:
            ds.preamble = b"\0" * 128
        old = getattr(ds, "file_meta", None)
        if old is None:
            return
        # Built from DataElements directly: attribute assignment validates every value and is slow per file.
        meta = FileMetaDataset()
        put = meta._dict.__setitem__
        put(Tag(0x00020001), DataElement(0x00020001, "OB", b"\x00\x01"))
        sop_class = old.get("MediaStorageSOPClassUID", None) or ds.get("SOPClassUID")
        if sop_class is not None:
            put(Tag(0x00020002), DataElement(0x00020002, "UI", sop_class))
        if "SOPInstanceUID" in ds:
            put(Tag(0x00020003), DataElement(0x00020003, "UI", ds.SOPInstanceUID))
        if "TransferSyntaxUID" in old:
            put(Tag(0x00020010), DataElement(0x00020010, "UI", old.TransferSyntaxUID))
        # Source AE titles and private information in the meta identify the sender: not carried over.
        put(Tag(0x00020012), DataElement(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID))
        put(Tag(0x00020013), DataElement(0x00020013, "SH", "DICOM_RELAY_01"))
        ds.file_meta = meta

