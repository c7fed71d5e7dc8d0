"""``dicom-relay``: the command line for the person on call.

    dicom-relay status [--json] [--limit N] [--batch ID]
    dicom-relay deidentify IN_DIR OUT_DIR [--option NAME=VALUE ...]
    dicom-relay verify ORIGINAL_DIR DEIDENTIFIED_DIR

Settings come from the environment (``. .run/stack.env`` after ``make run``). Nothing printed here contains a
patient identifier or a folder name: batches are shown by batch id, files by quarantine label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import ConfigError, Settings
from .errors import RelayError


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return name, True
    if lowered in ("false", "no", "off", "0"):
        return name, False
    return name, value


def cmd_status(args, settings: Settings) -> int:
    from .status import StatusStore, to_json

    store = StatusStore(settings.db_url)
    store.migrate()
    if args.batch:
        batch = store.get_batch(args.batch)
        batches = [batch] if batch else []
        if not batches:
            print(f"no batch {args.batch}", file=sys.stderr)
            return 1
    else:
        batches = store.list_batches(limit=args.limit, status=args.state)
    if args.json:
        print(to_json(batches))
        return 0
    if not batches:
        print("no batches yet")
        return 0
    print(f"{'BATCH':<24} {'STATUS':<15} {'ERR':<4} {'INSTANCES':<40} RUN")
    for b in batches:
        counts = " ".join(f"{k}={v}" for k, v in sorted(b.counts.items())) or "-"
        print(f"{b.batch_id:<24} {b.status:<15} {'yes' if b.has_error else 'no':<4} {counts:<40} {b.run_id or '-'}")
        if args.errors or args.batch:
            for e in b.errors:
                print(f"    {e['at']} {e['task']}: {e['message']}")
    return 0


def cmd_deidentify(args, settings: Settings) -> int:
    """De-identify a folder offline with the embedded keyed provider (no service, no database, no Airflow)."""
    from .deid import Deidentifier, DeidOptions, find_leaks, identifying_values
    from .dicom_import import index_folder
    from .identifiers import LocalProvider
    from .pipeline import build_entities, identities_from_mapping, pseudonym_mapping, _patient_key

    import pydicom

    if not settings.secret_key:
        print("error: set RELAY_SECRET_KEY (the key of the local pseudonyms and of the UID hash)", file=sys.stderr)
        return 2
    options = DeidOptions.from_mapping(dict(args.option or []))
    index = index_folder(args.in_dir)
    entities = build_entities(index, settings.identifier_id_source)
    provider = LocalProvider(settings.secret_key)
    identities = identities_from_mapping(pseudonym_mapping(entities, provider.lookup("offline", entities)))
    deidentifier = Deidentifier(settings.secret_key, options)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written, held, originals, outputs = 0, 0, set(), []
    for inst in index.instances:
        src = args.in_dir / inst.relpath
        identity = identities[_patient_key(inst)]
        originals |= identifying_values(pydicom.dcmread(src, stop_before_pixels=True), options, identity)
        result = deidentifier.deidentify_file(src, args.out_dir, identity)
        if result.quarantine_reason:
            held += 1
            print(f"held back: file {held} of the input ({result.quarantine_reason})", file=sys.stderr)
        else:
            written += 1
            outputs.append(result.path)
    leaks = find_leaks(originals, outputs)
    for leak in leaks[:20]:
        print(f"LEAK: {leak.message}", file=sys.stderr)
    print(json.dumps({"written": written, "held_back": held, "not_dicom": len(index.rejected), "leaks": len(leaks)}))
    return 1 if leaks else 0


def cmd_verify(args, settings: Settings) -> int:
    """Scan a de-identified folder for the identifying values of the originals; exit 1 if any survived."""
    from .deid import DeidOptions, find_leaks, identifying_values
    from .dicom_import import index_folder

    import pydicom

    originals: set[str] = set()
    index = index_folder(args.original_dir)
    for inst in index.instances:
        originals |= identifying_values(pydicom.dcmread(args.original_dir / inst.relpath, stop_before_pixels=True),
                                        DeidOptions())
    outputs = sorted(p for p in args.deidentified_dir.rglob("*") if p.is_file())
    leaks = find_leaks(originals, outputs)
    for leak in leaks:
        print(f"LEAK: {leak.message}")
    print(json.dumps({"originals": len(index.instances), "checked": len(outputs), "leaks": len(leaks)}))
    return 1 if leaks else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-relay", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="list batches: status, instance counts per state, errors, Airflow run id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--state", help="only batches in this status (e.g. ERROR)")
    p.add_argument("--batch", help="one batch, with its errors")
    p.add_argument("--errors", action="store_true", help="print each batch's errors")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("deidentify", help="de-identify a folder offline with the embedded keyed provider")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--option", action="append", type=_parse_option, metavar="NAME=VALUE",
                   help="a de-identification option (see docs/DEIDENTIFICATION.md); repeatable")
    p.set_defaults(func=cmd_deidentify)

    p = sub.add_parser("verify", help="check de-identified output for identifying values of the originals")
    p.add_argument("original_dir", type=Path)
    p.add_argument("deidentified_dir", type=Path)
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.func(args, settings)
    except (ConfigError, RelayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
