"""Real-world DICOM corpus: every file pydicom, pydicom-data and deid-data ship, plus dcmtk transcodes of some of
them, run through ``dicom-relay deidentify IN OUT`` as a user runs it, and judged file by file.

Corpus (:func:`collect`):

* every regular file that ``pydicom.data.get_testdata_files()`` returns (pydicom's own test files and, with
  pydicom-data installed, its data store), including the ones that are no DICOM instance at all (JSON, ICC
  profiles, DICOMDIRs, truncated files): those must be rejected with a reason;
* every file of deid-data's ``data`` folder (DICOM files, a README and zipped cine loops);
* dcmtk transcodes of uncompressed sources (:data:`TRANSCODE_SOURCES`): JPEG Lossless SV1 (``dcmcjpeg +e1``),
  JPEG-LS lossless (``dcmcjpls``) and RLE (``dcmcrle``), each also with Data Set Trailing Padding (FFFC,FFFC)
  appended after Pixel Data.

Run (:func:`run_corpus`): each file alone in its own folder, then all of them together in one folder. Each folder
is de-identified by ``dicom_relay.cli.main(["deidentify", IN, OUT, ...])`` in a child process with
``RELAY_SECRET_KEY`` set (``--launch fork``: forked from a process that has imported the product once, so 300
runs fit in the test's time; ``--launch exec``: the ``dicom-relay`` console script, a fresh interpreter per run).
With ``--report`` in the command line's help, outcomes come from its JSON report; otherwise from its summary line,
its stderr and the output folder.

Judgement per file (:func:`judge`), the issue's conditions:

* ``valid_rejected``: pydicom reads the file as a valid instance (see :func:`pydicom_verdict`), yet it is rejected;
* ``invalid_not_rejected``: pydicom cannot read it as an instance, yet it is not rejected with a reason;
* ``new_iod_errors``: dciodvfy reports an error on the delivered output that the original does not have
  (messages normalised: values, UIDs and numbers masked, compared as multisets);
* ``false_leak``: the command line (or ``dicom-relay verify``) reports a leak that the independent byte scan of
  this module does not confirm (a leak whose output was removed cannot be confirmed and counts here too);
* ``value_left``: the independent scan (:func:`identifying_values`, :func:`scan_output`) finds an original
  identifying value in the output;
* ``cli_error``: the command line exits with something else than 0 (clean) or 1 (leak found), or crashes.

Held back with a reason is an accepted outcome (burned-in, ultrasound, secondary capture wait for pixel cleaning).

Command line (the machine-readable result is one JSON document with a record per file)::

    PYTHONPATH=include:. .venv/bin/python -m tests.support.dicom_corpus --out /tmp/corpus.json [--workers 2]
        [--launch fork|exec] [--only GLOB] [--keep DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

REPO = Path(__file__).resolve().parents[2]
SECRET_KEY = "dicom-corpus-test-key"  # a fixed key: the same pseudonyms and UIDs on every run

#: Uncompressed sources of the dcmtk transcodes: (package, name as shipped). Monochrome 8 and 16 bit, signed and
#: unsigned, RGB, multi-frame, and a veterinary image from another toolkit.
TRANSCODE_SOURCES = [
    ("pydicom", "CT_small.dcm"),
    ("pydicom", "MR_small.dcm"),
    ("pydicom-data", "SC_rgb.dcm"),
    ("pydicom-data", "OBXXXX1A.dcm"),
    ("pydicom-data", "emri_small.dcm"),
    ("deid-data", "animals/cat.dcm"),
]
#: name: (dcmtk command, its options). All are lossless: the transcode keeps the source's pixel values.
CODECS = {
    "jpeg-lossless-sv1": ("dcmcjpeg", ["+e1"]),
    "jpeg-ls-lossless": ("dcmcjpls", []),
    "rle": ("dcmcrle", []),
}
PADDING_BYTES = 64

ASSERTIONS = {
    "valid_rejected": "a file pydicom reads as a valid instance is rejected",
    "invalid_not_rejected": "a file pydicom cannot read as an instance is not rejected with a reason",
    "new_iod_errors": "dciodvfy reports an error on the output that the original does not have",
    "false_leak": "a leak is reported that the independent scan does not confirm",
    "value_left": "an original identifying value is left in the output (independent scan)",
    "cli_error": "dicom-relay deidentify or verify failed (exit code other than 0 or 1, or a crash)",
    "harness_error": "the harness itself failed on the file (a tool missing, a timeout...)",
}


# ---------------------------------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CorpusFile:
    name: str  # as shipped by the package (relative to its data folder), or "<source name> [transcode]"
    source: str  # pydicom | pydicom-data | deid-data | dcmtk transcode
    path: str
    derived_from: str | None = None
    transcode: str | None = None  # codec name, "+padding" appended when padded


def _package_roots() -> dict[str, Path]:
    import deid_data
    import pydicom.data

    roots = {"pydicom": Path(pydicom.data.__file__).parent / "test_files",
             "deid-data": Path(deid_data.__file__).parent / "data"}
    try:
        import data_store  # pydicom-data's package
        roots["pydicom-data"] = Path(data_store.__file__).parent / "data"
    except ImportError:
        pass
    return roots


def pydicom_testdata_files(pattern: str = "**/*") -> list[str]:
    """``pydicom.data.get_testdata_files(pattern)`` without the network.

    Besides pydicom's own files and pydicom-data's (installed, pinned in requirements-test.txt), that function
    fetches every file of pydicom's online test set missing from ``~/.pydicom/data``, from GitHub. pydicom-data
    is that same set, so nothing is missing, and tests and tools must never download at run time: the download
    is refused with pydicom's own switch for its network-outage tests, and the warning about it dropped.
    """
    import pydicom.data.download as download
    from pydicom.data import get_testdata_files

    assert hasattr(download, "_SIMULATE_NETWORK_OUTAGE"), "pydicom changed: the download switch is gone"
    before, download._SIMULATE_NETWORK_OUTAGE = download._SIMULATE_NETWORK_OUTAGE, True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="One or more download failures occurred")
            return get_testdata_files(pattern)
    finally:
        download._SIMULATE_NETWORK_OUTAGE = before


def shipped_files() -> list[CorpusFile]:
    """Every regular file of pydicom's test data (get_testdata_files) and of deid-data's data folder."""
    roots = _package_roots()
    files: list[CorpusFile] = []
    for path in sorted({str(Path(p).resolve()) for p in pydicom_testdata_files()}):
        if not os.path.isfile(path) or "__pycache__" in Path(path).parts:
            continue  # folders of the DICOMDIR test sets; Python's byte code caches come and go
        for source in ("pydicom", "pydicom-data"):
            root = roots.get(source)
            if root and path.startswith(str(root.resolve()) + os.sep):
                files.append(CorpusFile(os.path.relpath(path, root.resolve()), source, path))
                break
        else:
            files.append(CorpusFile(os.path.basename(path), "pydicom", path))
    deid_root = roots["deid-data"]
    for path in sorted(p for p in deid_root.rglob("*") if p.is_file()):
        files.append(CorpusFile(str(path.relative_to(deid_root)), "deid-data", str(path)))
    return files


def add_trailing_padding(src: Path, dst: Path, n: int = PADDING_BYTES) -> None:
    """Copy ``src`` with a Data Set Trailing Padding element (FFFC,FFFC) OB of ``n`` zero bytes appended.

    (FFFC,FFFC) is the last tag a data set can hold, so appending it keeps the elements in ascending order; a
    padding element the source already ends with is replaced. The transcodes are Explicit VR Little Endian
    encapsulated syntaxes.
    """
    data = src.read_bytes()
    head = b"\xfc\xff\xfc\xffOB\x00\x00"
    at = data.rfind(head)
    if at >= 0 and at + 12 + int.from_bytes(data[at + 8:at + 12], "little") == len(data):
        data = data[:at]  # the source already ends with padding (dcmtk keeps it): replace it, never repeat a tag
    dst.write_bytes(data + head + n.to_bytes(4, "little") + b"\x00" * n)


def transcodes(work: Path, shipped: list[CorpusFile]) -> list[CorpusFile]:
    """dcmtk transcodes of :data:`TRANSCODE_SOURCES`, each also padded. A missing tool or a failed transcode
    raises: the corpus is not silently smaller."""
    by_key = {(f.source, f.name): f for f in shipped}
    out_dir = work / "transcodes"
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[CorpusFile] = []
    for source, name in TRANSCODE_SOURCES:
        src = by_key[(source, name)]
        stem = name.replace("/", "_").removesuffix(".dcm")
        for codec, (tool, options) in CODECS.items():
            dst = out_dir / f"{stem}.{codec}.dcm"
            proc = subprocess.run([tool, *options, src.path, str(dst)], capture_output=True, text=True)
            if proc.returncode != 0 or not dst.is_file():
                raise RuntimeError(f"{tool} failed on {source}:{name}: {proc.stderr.strip()[:300]}")
            files.append(CorpusFile(f"{name} [{codec}]", "dcmtk transcode", str(dst), f"{source}:{name}", codec))
            padded = out_dir / f"{stem}.{codec}.padded.dcm"
            add_trailing_padding(dst, padded)
            files.append(CorpusFile(f"{name} [{codec}+padding]", "dcmtk transcode", str(padded), f"{source}:{name}",
                                    f"{codec}+padding"))
    return files


def collect(work: Path, only: str | None = None) -> list[CorpusFile]:
    files = shipped_files()
    files += transcodes(work, files)
    if only:
        files = [f for f in files if fnmatch.fnmatch(f.name, only)]
    return files


# ---------------------------------------------------------------------------------------------------- oracles
def _raw_truncated(ds) -> bool:
    """True if pydicom read a value shorter than its declared length (pydicom reads such files silently)."""
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.value is not None \
                and len(raw.value) < raw.length:
            return True
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                if _raw_truncated(item):
                    return True
    return False


def pydicom_verdict(path: str) -> dict:
    """How pydicom reads the file: {valid, reason, transfer_syntax, sop_class}.

    Valid instance: ``dcmread`` reads it (forced only when the preamble is missing, as import does), every element
    converts, no value is shorter than declared, no end of file before a delimiter, the four identifying UIDs
    (SOP Class, SOP Instance, Study, Series) are present, it is no DICOMDIR, and encapsulated Pixel Data splits
    into items.
    """
    verdict = {"valid": False, "reason": None, "transfer_syntax": None, "sop_class": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, force=True)
                if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")):
                    verdict["reason"] = "not DICOM (no 'DICM' prefix, no instance UIDs when forced)"
                    return verdict
            meta = getattr(ds, "file_meta", None)
            ts = meta.get("TransferSyntaxUID") if meta is not None else None
            verdict["transfer_syntax"] = UID(ts).name if ts else None
            sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
            verdict["sop_class"] = UID(str(sop)).name if sop else None
            if _raw_truncated(ds):
                verdict["reason"] = "a value is shorter than its declared length (truncated)"
                return verdict
            for _ in ds.iterall():
                pass
        except Exception as exc:  # noqa: BLE001 - the oracle's verdict, not an error of the harness
            verdict["reason"] = f"pydicom cannot read it ({type(exc).__name__})"
            return verdict
    if any("End of file reached" in str(w.message) for w in caught):
        verdict["reason"] = "ends before a delimiter (truncated)"
        return verdict
    if "DirectoryRecordSequence" in ds:
        verdict["reason"] = "a DICOMDIR"
        return verdict
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        verdict["reason"] = "no " + ", ".join(missing)
        return verdict
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        from pydicom.encaps import generate_fragments
        try:
            for _ in generate_fragments(ds.PixelData):
                pass
        except Exception as exc:  # noqa: BLE001
            verdict["reason"] = f"encapsulated Pixel Data does not split into items ({type(exc).__name__})"
            return verdict
    verdict["valid"] = True
    return verdict


_MASKS = [
    (re.compile(r"= <[^>]*>"), "= <*>"),  # values quoted by dciodvfy
    (re.compile(r'"[^"]*"'), '"*"'),
    (re.compile(r"(?<![0-9A-Za-z])\d[\d.]*(?![0-9A-Za-z])"), "#"),  # UIDs, numbers, counts; not tags (0x0008)
]


def normalise_iod_message(line: str) -> str:
    for pattern, repl in _MASKS:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def dciodvfy_errors(path: str) -> list[str]:
    """dciodvfy's error messages (not warnings) on ``path``, normalised so that original and output compare."""
    proc = subprocess.run(["dciodvfy", path], capture_output=True, text=True, errors="replace", timeout=120)
    text = proc.stdout + proc.stderr
    return sorted(normalise_iod_message(line) for line in text.splitlines() if line.startswith("Error"))


# Values too common or too short to say anything when found in the output bytes.
_TRIVIAL = {"ANONYMOUS", "ANONYMIZED", "ANON", "UNKNOWN", "REMOVED", "NONE", "NULL", "TEST", "PATIENT", "PHANTOM",
            "DEFAULT", "OTHER", "N/A", "NA"}
#: Attributes whose values identify (independent of the engine's tables): patient, visit, staff, institution,
#: device identity, and the instance UIDs (replaced unless Retain UIDs). PN values are taken wherever they are.
IDENTIFYING_KEYWORDS = {
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "PatientBirthDate", "PatientAddress",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "AccessionNumber", "StudyID", "AdmissionID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "RequestingService", "PatientInsurancePlanCodeSequence", "MilitaryRank", "BranchOfService", "EthnicGroup",
    "Occupation", "CountryOfResidence", "RegionOfResidence", "PatientMotherBirthName",
    "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "MediaStorageSOPInstanceUID", "ReferencedSOPInstanceUID", "SynchronizationFrameOfReferenceUID",
    "IrradiationEventUID", "DimensionOrganizationUID", "ConcatenationUID",
}


def _usable(value: str) -> bool:
    v = value.strip().strip("^").strip()
    if len(v) < 4 or v.upper() in _TRIVIAL or len(set(v)) < 3:
        return False
    return True


def identifying_values(path: str) -> dict[str, str]:
    """value -> keyword of the original's identifying values (at every depth), for the independent scan.

    PN values whole and per component group; the values of :data:`IDENTIFYING_KEYWORDS`; short or generic
    values (:func:`_usable`) are left out, they would match by chance.
    """
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - nothing to scan for in a file pydicom cannot read
        return {}
    values: dict[str, str] = {}
    meta = getattr(ds, "file_meta", None)
    elements = list(meta.iterall()) if meta is not None else []
    try:
        elements += list(ds.iterall())
    except Exception:  # noqa: BLE001
        pass
    for elem in elements:
        keyword = elem.keyword or str(elem.tag)
        if elem.VR == "PN" or keyword in IDENTIFYING_KEYWORDS:
            if elem.VR == "SQ":
                continue
            raw = elem.value
            items = raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
            for item in items:
                if item is None:
                    continue
                text = str(item)
                candidates = [text]
                if elem.VR == "PN":
                    candidates += [g for g in text.split("=")]  # alphabetic / ideographic / phonetic groups
                for c in candidates:
                    if _usable(c):
                        values.setdefault(c.strip(), keyword)
    return values


def _string_elements(path: str) -> list[tuple[str, str]]:
    """(keyword, value text) of every element at every depth, File Meta Information included; [] if unreadable."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        elements = (list(meta.iterall()) if meta is not None else []) + list(ds.iterall())
    except Exception:  # noqa: BLE001
        return []
    out = []
    for elem in elements:
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.value is None:
            continue
        value = elem.value
        parts = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        out += [(elem.keyword or str(elem.tag), str(v)) for v in parts]
    return out


def _token(needle: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?<![0-9A-Za-z._])" + re.escape(needle) + rb"(?![0-9A-Za-z._])")


def kept_values(original: str) -> set[tuple[str, str]]:
    """(keyword, value) of the original's attributes outside :data:`IDENTIFYING_KEYWORDS` and not PN."""
    return {(k, v.strip()) for k, v in _string_elements(original) if k not in IDENTIFYING_KEYWORDS}


#: Values shorter than this are not searched inside the Pixel Data value: there they match by chance (a 4-byte
#: value in a 43 MB cine meets 4e7 positions at 2**-32 each, and palette gradients hold runs such as "abcd"). Text in
#: the pixels is the OCR check's to find (tests/integration/test_pixel_corpus.py), not this byte scan's.
PIXEL_MIN_LEN = 8


def _without_pixel_value(path: str, data: bytes) -> bytes:
    """``data`` with the top-level Pixel Data value cut out (a NUL in its place); ``data`` if there is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
        raw = ds._dict.get(0x7FE00010)  # noqa: SLF001 - the raw element keeps the file offset of its value
    except Exception:  # noqa: BLE001 - unreadable: scan every byte
        return data
    if not isinstance(raw, RawDataElement) or raw.value is None or not raw.value_tell:
        return data
    start = raw.value_tell
    return data[:start] + b"\0" + data[start + len(raw.value):]


def scan_output(values: dict[str, str], path: str, kept: set[tuple[str, str]] | None = None) -> list[str]:
    """Keywords of the original identifying values found in the output's bytes, as a whole token.

    A value found only where the original holds the same value in an attribute that is not identifying (the
    Manufacturer "TOSHIBA MEC" of a file whose Institution Name is "TOSHIBA MEC") is a kept value, not a leak: with
    ``kept`` (:func:`kept_values` of the original, or of all originals of a folder) given, such hits are left out.
    A hit anywhere else (another attribute, a private or UN value, the pixel data for values of at least
    :data:`PIXEL_MIN_LEN` characters) counts.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    short_data = None  # data without the pixel value, made when a short value needs it

    def haystack(needle: bytes) -> bytes:
        nonlocal short_data
        if len(needle) >= PIXEL_MIN_LEN:
            return data
        if short_data is None:
            short_data = _without_pixel_value(path, data)
        return short_data

    hits = []
    for value, keyword in values.items():
        try:
            needle = value.encode("utf-8")
        except UnicodeEncodeError:
            continue
        if needle in data and _token(needle).search(haystack(needle)):
            hits.append((value, keyword))
    if not hits or kept is None:
        return sorted({k for _, k in hits})
    output_elements = _string_elements(path)
    found = set()
    for value, keyword in hits:
        raw = value.encode("utf-8")
        needle = _token(raw)
        holders = [(k, v.strip()) for k, v in output_elements if needle.search(v.encode("utf-8", "replace"))]
        # Each occurrence in the bytes must sit in a value the original already held in a kept attribute.
        explained = sum(len(needle.findall(v.encode("utf-8", "replace"))) for k, v in holders if (k, v) in kept)
        if len(needle.findall(haystack(raw))) > explained:
            found.add(keyword)
    return sorted(found)


# ---------------------------------------------------------------------------------------------------- running
def cli_supports_report() -> bool:
    from dicom_relay.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return "--report" in sub.choices["deidentify"].format_help()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_SECRET_KEY"] = SECRET_KEY
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), str(REPO)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_cli(argv: list[str], launch: str = "fork", timeout: float = 600) -> tuple[int, str, str]:
    """Run the command line with ``argv`` in a child process: (exit code, stdout, stderr)."""
    env = _env()
    if launch == "exec":
        script = Path(sys.executable).with_name("dicom-relay")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "dicom_relay.cli"]
        proc = subprocess.run(cmd + argv, env=env, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: a fresh process state for the run, the product already imported
            rc = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                os.environ.clear()
                os.environ.update(env)
                from dicom_relay.cli import main

                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # noqa: BLE001 - a crash is reported as such
                traceback.print_exc()
                rc = 70
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(rc if isinstance(rc, int) else 70)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return 124, "", "timeout"
            time.sleep(0.005)
        out.seek(0)
        err.seek(0)
        return (os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"),
                err.read().decode(errors="replace"))


def _summary_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def _leak_lines(text: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("LEAK")]


def deidentify_folder(in_dir: Path, out_dir: Path, launch: str, report: bool) -> dict:
    """Run ``dicom-relay deidentify``: {rc, summary, stderr, leaks, files: {input relpath: {outcome, reason, output}}}."""
    argv = ["deidentify", str(in_dir), str(out_dir)]
    report_path = out_dir.parent / f"{out_dir.name}.report.json"
    if report:
        argv += ["--report", str(report_path)]
    rc, stdout, stderr = run_cli(argv, launch)
    result = {"rc": rc, "summary": _summary_line(stdout), "stderr": stderr[-4000:], "leaks": _leak_lines(stderr),
              "files": {}}
    if report and report_path.is_file():
        doc = json.loads(report_path.read_text())
        for f in doc.get("files", []):
            result["files"][f["input"]] = {"outcome": f.get("outcome"), "reason": f.get("reason"),
                                           "output": f.get("output")}
    return result


def _outcome_from_summary(cli: dict, relpath: str, in_dir: Path, out_dir: Path) -> dict:
    """One file alone in its folder, a command line without --report: outcome from the counts and stderr."""
    from dicom_relay.dicom_import import Rejected, read_instance

    s = cli["summary"]
    outputs = sorted(p.name for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    if s.get("not_dicom"):
        r = read_instance(in_dir / relpath, relpath)  # the same import code: the CLI prints counts only
        return {"outcome": "rejected", "reason": r.reason if isinstance(r, Rejected) else None, "output": None}
    if s.get("held_back"):
        m = re.search(r"held back: file \d+ of the input \((.*)\)\s*$", cli["stderr"], re.M)
        return {"outcome": "held_back", "reason": m.group(1) if m else None, "output": None}
    if s.get("written"):
        if s.get("leaks"):
            return {"outcome": "leak", "reason": "; ".join(cli["leaks"][:3]) or "leak",
                    "output": outputs[0] if outputs else None}
        return {"outcome": "delivered", "reason": None, "output": outputs[0] if outputs else None}
    return {"outcome": "error", "reason": f"exit code {cli['rc']}", "output": None}


def recreate_output(in_dir: Path, out_dir: Path) -> list[str]:
    """The engine's output for the one instance of ``in_dir``, made as ``dicom-relay deidentify`` makes it (same
    key, same offline pseudonym provider), without its verification; [] if that cannot be done."""
    try:
        from dicom_relay.config import Settings
        from dicom_relay.deid import Deidentifier, DeidOptions
        from dicom_relay.dicom_import import index_folder
        from dicom_relay.folder_deid import instance_patient_key
        from dicom_relay.identifiers import LocalProvider
        from dicom_relay.pipeline import build_entities, identities_from_mapping, pseudonym_mapping

        settings = Settings.from_env(_env())
        index = index_folder(in_dir)
        entities = build_entities(index, settings.identifier_id_source)
        provider = LocalProvider(settings.secret_key)
        identities = identities_from_mapping(pseudonym_mapping(entities, provider.lookup("offline", entities)))
        deidentifier = Deidentifier(settings.secret_key, DeidOptions.from_mapping(settings.deid_options))
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for inst in index.instances:
            result = deidentifier.deidentify_file(in_dir / inst.relpath, out_dir, identities[instance_patient_key(inst)])
            if result.path is not None:
                paths.append(str(result.path))
        return paths
    except Exception:  # noqa: BLE001 - an interface that moved: the leak stays unconfirmed, and says so
        return []


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def process_file(task: tuple[int, dict, str, str, bool]) -> dict:
    """Everything about one corpus file, alone in its folder. Runs in a pool worker; a failure of the harness
    itself is recorded (``harness_error``) so that one file cannot hide the results of the others."""
    try:
        return _process_file(task)
    except Exception:  # noqa: BLE001
        _, cf_dict, _, _, _ = task
        return {**cf_dict, "folder": None, "pydicom": {"valid": None, "reason": None, "transfer_syntax": None,
                                                        "sop_class": None},
                "outcome": "error", "reason": "harness error", "output": None, "cli": {"rc": None, "summary": {},
                                                                                        "leaks": []},
                "verify": None, "scan": [], "iod_errors_before": [], "iod_errors_after": None, "iod_errors_new": [],
                "failures": {"harness_error": traceback.format_exc()[-1500:]}, "seconds": None}


def _process_file(task: tuple[int, dict, str, str, bool]) -> dict:
    index, cf_dict, work, launch, report = task
    warnings.simplefilter("ignore")  # pydicom's warnings on odd test files: the record says what matters
    cf = CorpusFile(**cf_dict)
    t0 = time.monotonic()
    case = Path(work) / "single" / f"{index:04d}"
    in_dir, out_dir = case / "in", case / "out"
    in_dir.mkdir(parents=True, exist_ok=True)
    relpath = _safe_name(os.path.basename(cf.name.split(" [")[0]) if cf.transcode is None
                         else os.path.basename(cf.path))
    shutil.copyfile(cf.path, in_dir / relpath)
    record = asdict(cf)
    record["folder"] = f"single/{index:04d}"
    verdict = pydicom_verdict(cf.path)
    record["pydicom"] = verdict
    cli = deidentify_folder(in_dir, out_dir, launch, report)
    outcome = cli["files"].get(relpath) if report else None
    if outcome is None:
        outcome = _outcome_from_summary(cli, relpath, in_dir, out_dir)
    record.update(outcome)
    record["cli"] = {"rc": cli["rc"], "summary": cli["summary"], "leaks": cli["leaks"]}
    if cli["rc"] not in (0, 1):
        record["cli"]["stderr"] = cli["stderr"][-1500:]
    outputs = sorted(str(p) for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    scanned = outputs
    record["scan_of"] = "output" if outputs else None
    if not outputs and record["outcome"] == "leak":
        # The command line removed the output it found a leak in (fail closed). To tell a real leak from a false
        # one, the same engine call is made here, with the same key and identity, and its output is scanned.
        scanned = recreate_output(in_dir, case / "recreated")
        record["scan_of"] = "re-created output (the command line removed its own)" if scanned else None
    values = identifying_values(cf.path) if scanned else {}
    kept = kept_values(cf.path) if scanned else set()
    record["scan"] = sorted({k for o in scanned for k in scan_output(values, o, kept)})
    if outputs:
        vrc, vout, verr = run_cli(["verify", str(in_dir), str(out_dir)], launch)
        record["verify"] = {"rc": vrc, "leaks": _leak_lines(vout)}
        if vrc not in (0, 1):
            record["verify"]["stderr"] = verr[-1500:]
    else:
        record["verify"] = None
    record["iod_errors_before"] = dciodvfy_errors(cf.path) if verdict["valid"] else []
    delivered = record["outcome"] == "delivered" and record.get("output") and (out_dir / record["output"]).is_file()
    if delivered:
        after = dciodvfy_errors(str(out_dir / record["output"]))
        record["iod_errors_after"] = after
        record["iod_errors_new"] = sorted((Counter(after) - Counter(record["iod_errors_before"])).elements())
    else:
        record["iod_errors_after"] = None
        record["iod_errors_new"] = []
    record["failures"] = judge(record)
    record["seconds"] = round(time.monotonic() - t0, 3)
    return record


def judge(record: dict) -> dict[str, str]:
    """The issue's conditions on one file: {assertion id: why} for each one that fails."""
    failures: dict[str, str] = {}
    valid, outcome, reason = record["pydicom"]["valid"], record["outcome"], record.get("reason")
    if valid and outcome == "rejected":
        failures["valid_rejected"] = f"rejected: {reason}"
    if not valid and (outcome not in ("rejected",) or not reason):
        failures["invalid_not_rejected"] = f"pydicom: {record['pydicom']['reason']}; outcome {outcome} ({reason})"
    if record.get("iod_errors_new"):
        failures["new_iod_errors"] = "; ".join(record["iod_errors_new"][:5])
    reported = list(record["cli"]["leaks"]) + list((record.get("verify") or {}).get("leaks") or [])
    if outcome == "leak":
        reported.append(reason or "leak")
    if record["cli"]["summary"].get("leaks") and not reported:
        reported = [f"{record['cli']['summary']['leaks']} leak(s)"]
    if reported and not record["scan"]:
        failures["false_leak"] = "; ".join(reported[:3]) + (
            "" if record.get("scan_of") else " (no output to scan: not confirmed either way)")
    if record["scan"]:
        failures["value_left"] = "found: " + ", ".join(record["scan"])
    if record["cli"]["rc"] not in (0, 1) or outcome == "error":
        failures["cli_error"] = f"deidentify exit code {record['cli']['rc']}: {record['cli'].get('stderr', '')[-300:]}"
    verify = record.get("verify") or {}
    if verify and verify["rc"] not in (0, 1):
        failures["cli_error"] = f"verify exit code {verify['rc']}: {_last_line(verify.get('stderr', ''))}"
    return failures


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def process_together(files: list[CorpusFile], work: Path, launch: str, report: bool,
                     valid: dict[str, bool] | None = None) -> dict:
    """All corpus files in one folder: one deidentify run, then ``dicom-relay verify`` and the scan over all.

    ``valid``: corpus name -> pydicom's verdict; with the command line's ``--report``, a valid file rejected (a
    duplicate SOP Instance UID is not a rejection) or an invalid one not rejected fails here too.
    """
    t0 = time.monotonic()
    warnings.simplefilter("ignore")
    in_dir, out_dir = work / "together" / "in", work / "together" / "out"
    in_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, cf in enumerate(files):
        rel = f"{i:04d}_{_safe_name(os.path.basename(cf.path))}"
        shutil.copyfile(cf.path, in_dir / rel)
        names[rel] = cf.name
    cli = deidentify_folder(in_dir, out_dir, launch, report)
    outputs = sorted(str(p) for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    vrc, vout, verr = run_cli(["verify", str(in_dir), str(out_dir)], launch)
    values: dict[str, str] = {}
    kept: set[tuple[str, str]] = set()
    for rel in names:
        for value, keyword in identifying_values(str(in_dir / rel)).items():
            values.setdefault(value, keyword)
        kept |= kept_values(str(in_dir / rel))
    scanned = list(outputs)
    leaked = [rel for rel, o in cli["files"].items() if o["outcome"] == "leak"]
    if leaked:  # outputs removed by the command line: re-created (see recreate_output) to confirm or refute
        again = work / "together" / "leaked"
        again.mkdir(parents=True, exist_ok=True)
        for rel in leaked:
            shutil.copyfile(in_dir / rel, again / rel)
        scanned += recreate_output(again, work / "together" / "recreated")
    scan: dict[str, list[str]] = {}
    for out in scanned:
        found = scan_output(values, out, kept)
        if found:
            scan[os.path.basename(out)] = found
    per_file = {names[rel]: v for rel, v in cli["files"].items() if rel in names}
    failures: dict[str, str] = {}
    if cli["rc"] not in (0, 1):
        failures["cli_error"] = f"deidentify exit code {cli['rc']}: {_last_line(cli['stderr'])}"
    if vrc not in (0, 1):
        failures["cli_error"] = f"verify exit code {vrc}: {_last_line(verr)}"
    reported = cli["leaks"] + _leak_lines(vout) + [f"{rel}: {cli['files'][rel]['reason']}" for rel in leaked]
    if reported and not scan:
        failures["false_leak"] = "; ".join(reported[:5])
    if valid and per_file:
        wrong = [n for n, o in per_file.items() if valid.get(n) and o["outcome"] == "rejected"]
        if wrong:
            failures["valid_rejected"] = "; ".join(f"{n}: {per_file[n]['reason']}" for n in wrong[:10])
        wrong = [n for n, o in per_file.items() if valid.get(n) is False and o["outcome"] != "rejected"]
        if wrong:
            failures["invalid_not_rejected"] = "; ".join(f"{n}: {per_file[n]['outcome']}" for n in wrong[:10])
    if scan:
        failures["value_left"] = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(scan.items())[:5])
    return {"files": len(files), "rc": cli["rc"], "summary": cli["summary"], "leaks": cli["leaks"],
            "verify": {"rc": vrc, "summary": _summary_line(vout), "leaks": _leak_lines(vout)},
            "outputs": len(outputs), "scan": scan, "per_file": per_file, "failures": failures,
            "seconds": round(time.monotonic() - t0, 1)}


def run_corpus(work: Path, workers: int = 2, launch: str = "fork", only: str | None = None,
               together: bool = True) -> dict:
    """Build the corpus under ``work`` and run it; the machine-readable result (see module docstring)."""
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    # Imported before the pool forks, so every run's child starts with the product loaded.
    import dicom_relay.cli  # noqa: F401
    import dicom_relay.deid  # noqa: F401

    files = collect(work, only)
    report = cli_supports_report()
    tasks = [(i, asdict(cf), str(work), launch, report) for i, cf in enumerate(files)]
    ctx = multiprocessing.get_context("fork")
    if workers > 1:
        with ctx.Pool(workers) as pool:
            records = pool.map(process_file, tasks, chunksize=1)
    else:
        records = [process_file(t) for t in tasks]
    valid = {r["name"]: r["pydicom"]["valid"] for r in records}
    result = {"files": records,
              "together": process_together(files, work, launch, report, valid) if together else None,
              "cli_report": report, "launch": launch, "workers": workers}
    result["counts"] = counts(records)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["host"] = f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pydicom {pydicom.__version__}"
    return result


def counts(records: list[dict]) -> dict:
    def reason_key(r):
        return r.get("reason") or "(no reason)"

    return {
        "files": len(records),
        "outcomes": dict(Counter(r["outcome"] for r in records)),
        "held_back": dict(Counter(reason_key(r) for r in records if r["outcome"] == "held_back")),
        "rejected": dict(Counter(reason_key(r) for r in records if r["outcome"] == "rejected")),
        "failures": {a: sorted(r["name"] + f" ({r['source']})" for r in records if a in r["failures"])
                     for a in ASSERTIONS},
    }


def failures_text(result: dict) -> str:
    """The failing files per assertion, with why: the message of the corpus test."""
    lines = []
    for assertion, text in ASSERTIONS.items():
        hits = [r for r in result["files"] if assertion in r["failures"]]
        if hits:
            lines.append(f"{assertion}: {text} ({len(hits)} files)")
            lines += [f"    {r['name']} [{r['source']}]: {r['failures'][assertion][:300]}" for r in hits]
    together = result.get("together") or {}
    for assertion, why in (together.get("failures") or {}).items():
        lines.append(f"{assertion} in the folder of all files together: {why[:600]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="write the JSON result here")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--launch", choices=("fork", "exec"), default="fork")
    parser.add_argument("--only", help="only corpus files whose name matches this glob")
    parser.add_argument("--no-together", action="store_true", help="skip the folder of all files together")
    parser.add_argument("--keep", type=Path, help="work folder to keep (inputs and outputs); default: temporary")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dicom-corpus-"))
    try:
        result = run_corpus(work, args.workers, args.launch, args.only, together=not args.no_together)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    c = result["counts"]
    print(json.dumps({"files": c["files"], "outcomes": c["outcomes"], "seconds": result["seconds"],
                      "failures": {a: len(v) for a, v in c["failures"].items()},
                      "together_failures": list((result.get("together") or {}).get("failures") or {})}))
    text = failures_text(result)
    if text:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
