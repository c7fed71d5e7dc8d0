"""``dicom-relay``: the command line for the person on call.

    dicom-relay migrate
    dicom-relay status [--json] [--limit N] [--batch ID]
    dicom-relay requeue BATCH [--force]
    dicom-relay quarantine list [BATCH] [--show-paths] [--all] [--json]
    dicom-relay quarantine release BATCH LABEL
    dicom-relay deidentify IN_DIR OUT_DIR [--option NAME=VALUE ...] [--pixels POLICY] [--report FILE] [--workers N]
    dicom-relay verify ORIGINAL_DIR DEIDENTIFIED_DIR

Settings come from the environment (``. .run/stack.env`` after ``make run``); the offline commands (deidentify,
verify) read only the four they use (:mod:`dicom_relay.offline_settings`). Nothing printed here contains a
patient identifier or a folder name: batches are shown by batch id, files by quarantine label.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import RelayError
from .files import write_json_atomically
from .offline_settings import ConfigError, OfflineSettings, is_placeholder

if TYPE_CHECKING:
    from .config import Settings


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    # The value stays text: DeidOptions.from_mapping parses "true"/"0"/... for the options that are switches.
    name, value = text.split("=", 1)
    return name.strip(), value


def cmd_status(args, settings: Settings) -> int:
    from .status import StatusStore, to_json

    store = StatusStore(settings.db_url)
    if args.refused:
        refusals = store.refusals()
        if args.json:
            print(json.dumps([r.public() for r in refusals], indent=2))
        else:
            _print_refusals(refusals, empty="no inbox entry is refused")
        return 0
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
    if not args.batch:
        # Shown above the batches: an entry waiting in the inbox that will never become a batch needs a person.
        _print_refusals(store.refusals())
    if not batches:
        print("no batches yet")
        return 0
    print(f"{'BATCH':<24} {'STATUS':<15} {'ERR':<4} {'INSTANCES':<40} RUN")
    for b in batches:
        counts = " ".join(f"{k}={v}" for k, v in sorted(b.counts.items())) or "-"
        print(f"{b.batch_id:<24} {b.status:<15} {'yes' if b.has_error else 'no':<4} {counts:<40} {b.run_id or '-'}")
        if args.errors or args.batch:
            for e in b.errors:
                kind = "transient" if e.get("transient") else "permanent"
                print(f"    {e['at']} {e['task']} ({kind}): {e['message']}")
        if b.last_decision and (args.errors or args.batch or b.status in ("ERROR", "NEW")):
            d = b.last_decision
            print(f"    last decision: {d.get('decision')} ({d.get('reason')})"
                  + (f" run {d['run_id']}" if d.get("run_id") else "") + f"; reruns used {b.rerun_count}")
    return 0


def _print_refusals(refusals, empty: str | None = None) -> None:
    if not refusals:
        if empty:
            print(empty)
        return
    print(f"INBOX ENTRIES NOT TAKEN ({len(refusals)}; names are not shown, they may identify a patient; "
          "`ls -la $RELAY_INBOX` shows them to whoever may see them)")
    for r in refusals:
        print(f"  {r.refusal_id:<24} {r.kind:<11} since {r.first_seen:%Y-%m-%d %H:%M:%S}  {r.reason}")
    print()


def cmd_migrate(args, settings: Settings) -> int:
    """Create or update the status tables; run once at start (compose init, make run), safe to run again."""
    from .status import StatusStore

    print(f"status tables at version {StatusStore(settings.db_url).migrate()}")
    return 0


def cmd_requeue(args, settings: Settings) -> int:
    from .airflow_client import AirflowClient, AirflowClientError
    from .operations import OperationError, requeue
    from .status import StatusStore

    try:
        client = AirflowClient.from_env()
        run_id = requeue(StatusStore(settings.db_url), client, args.batch, force=args.force)
    except (OperationError, AirflowClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # requests' connection errors
        print(f"error: cannot reach Airflow at {os.environ.get('AIRFLOW_URL')} ({type(exc).__name__})", file=sys.stderr)
        return 1
    print(run_id)
    return 0


def _size_text(n: int | None) -> str:
    if n is None:
        return "missing"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_quarantine_list(args, settings: Settings) -> int:
    from .operations import OperationError, quarantine_entries

    try:
        entries = quarantine_entries(settings, args.batch, include_released=args.all)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([e.public(show_paths=args.show_paths) for e in entries], indent=2))
        return 0
    if not entries:
        print("nothing in quarantine")
        return 0
    if args.show_paths:
        print("(original paths may name a patient: for this screen only, do not paste them anywhere)", file=sys.stderr)
    print(f"{'BATCH':<24} {'LABEL':<6} {'SIZE':>10}  REASON")
    for e in entries:
        reason = e.reason + (f" [released {e.released_at}]" if e.released_at else "")
        print(f"{e.batch_id:<24} {e.label:<6} {_size_text(e.size_bytes):>10}  {reason}")
        if args.show_paths:
            print(f"{'':<31} path: {e.relpath!r}")
    return 0


def cmd_quarantine_release(args, settings: Settings) -> int:
    from .operations import OperationError, release
    from .status import StatusStore

    try:
        result = release(settings, StatusStore(settings.db_url), args.batch, args.label)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"released {result['label']} of batch {result['batch_id']} into incoming (batch status {result['status']}); "
          f"now run: dicom-relay requeue {result['batch_id']}")
    return 0


def _offline_identities(index, settings: OfflineSettings) -> dict:
    """The pseudonyms and date shifts of the embedded keyed provider (the same for the same key)."""
    from .folder_deid import build_entities, identities_from_mapping, pseudonym_mapping
    from .identifiers import LocalProvider

    entities = build_entities(index, settings.identifier_id_source)
    provider = LocalProvider(settings.secret_key.get_secret_value())
    return identities_from_mapping(pseudonym_mapping(entities, provider.lookup("offline", entities)))


def cmd_deidentify(args, settings: OfflineSettings) -> int:
    """De-identify a folder offline with the embedded keyed provider (no service, no database, no Airflow).

    Fails closed: an instance whose output verification finds a leak has its output removed (exit 1).
    """
    # The cyclic garbage collector is off for the command: its passes over the long-lived objects (modules, the
    # index, the leak check, the results) cost about 15 % of the CPU of 500 CT instances, and a run makes almost
    # no cyclic garbage (measured: ~1.5 objects per file on the raw path, ~40 per pixel-cleaned file, never pixel
    # data; reference counting frees the rest as before). Back on afterwards, for a caller in its own process.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _deidentify(args, settings)
    finally:
        if collecting:
            gc.enable()


def _deidentify(args, settings: OfflineSettings) -> int:
    from .deid import Deidentifier, DeidOptions
    from .dicom_import import index_folder
    from .folder_deid import deidentify_folder, file_outcomes, summary

    if is_placeholder(settings.secret_key.get_secret_value()):
        print("error: RELAY_SECRET_KEY is empty or a placeholder; set it to a long random value (it keys the local "
              "pseudonyms and the UID hash)", file=sys.stderr)
        return 2
    if not args.in_dir.is_dir():
        print("error: IN_DIR is not a folder", file=sys.stderr)  # not its name: folder names may be PHI
        return 2
    from .deid.pixels import policy as pixel_policy

    given = dict(args.option or [])
    # Like a run's param: --pixels (or --option pixels=...) may make the deployment's policy stricter, not weaker.
    deployed = pixel_policy.at_least(settings.pixel_policy, settings.deid_options.get("pixels"))
    pixels = pixel_policy.at_least(pixel_policy.at_least(deployed, given.pop("pixels", None)), args.pixels)
    options = DeidOptions.from_mapping({**settings.deid_options, **given, "pixels": pixels})
    # The index keeps the headers it parses: a run in this process de-identifies from them (one parse per file).
    index = index_folder(args.in_dir, keep_headers=args.workers <= 1)
    deidentifier = Deidentifier(settings.secret_key.get_secret_value(), options)
    run = deidentify_folder(args.in_dir, index.instances, _offline_identities(index, settings), deidentifier,
                            args.out_dir, workers=args.workers, headers=index.headers)
    outcomes = file_outcomes(index, run)
    counts = summary(outcomes)
    # Files are counted, never named, on the terminal (input names are PHI); --report maps them (mode 0600).
    for n, o in enumerate(outcomes, start=1):
        if o.outcome in ("held_back", "leak"):
            print(f"{o.outcome.replace('_', ' ')}: file {n} of {len(outcomes)} ({o.reason})", file=sys.stderr)
    if args.report:
        write_json_atomically(Path(args.report), {"summary": counts, "files": [o.to_json() for o in outcomes]},
                              mode=0o600, indent=1)
    print(json.dumps(counts))
    return 1 if counts["leaks"] else 0



def cmd_verify(args, settings: OfflineSettings) -> int:
    """Scan a de-identified folder for the identifying values of the originals; exit 1 if any survived.

    With RELAY_SECRET_KEY (the key ``deidentify`` used) each output is matched to its original and the date
    shifts are known, so the rules per instance apply; without it the strict rule, and dates are not checked.
    """
    from .deid import Deidentifier, DeidOptions
    from .dicom_import import index_folder
    from .folder_deid import verify_folder

    for folder in (args.original_dir, args.deidentified_dir):
        if not folder.is_dir():
            print("error: both arguments must be folders", file=sys.stderr)
            return 2
    options = DeidOptions.from_mapping({**settings.deid_options, **dict(args.option or [])})
    index = index_folder(args.original_dir)
    keyed = bool(settings.secret_key)
    leaks = verify_folder(
        args.original_dir, index.instances, args.deidentified_dir, options,
        _offline_identities(index, settings) if keyed else None,
        Deidentifier(settings.secret_key.get_secret_value(), options) if keyed else None,
    )
    for leak in leaks:
        print(f"LEAK: {leak.message}")
    checked = sum(1 for p in args.deidentified_dir.rglob("*") if p.is_file())
    print(json.dumps({"originals": len(index.instances), "checked": checked, "leaks": len(leaks),
                      "matched_by_key": keyed}))
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
    p.add_argument("--refused", action="store_true",
                   help="only the inbox entries the relay will not take (symbolic links, plain files, unreadable "
                        "folders), by refusal id; with --json as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("migrate", help="create or update the status tables (once at start; safe to repeat)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("requeue", help="start a process_study run for a batch (Airflow REST API; AIRFLOW_URL, "
                                       "AIRFLOW_USER, AIRFLOW_PASSWORD); prints the run id")
    p.add_argument("batch")
    p.add_argument("--force", action="store_true", help="also for a DONE batch, or while its run is still active")
    p.set_defaults(func=cmd_requeue)

    q = sub.add_parser("quarantine", help="files held back from a batch: list them, release one").add_subparsers(
        dest="quarantine_command", required=True)
    p = q.add_parser("list", help="quarantined files per batch: label, size, reason (no file names)")
    p.add_argument("batch", nargs="?")
    p.add_argument("--show-paths", action="store_true",
                   help="also the original path in the batch (may be PHI: local display only)")
    p.add_argument("--all", action="store_true", help="also files released already")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_list)
    p = q.add_parser("release", help="move a quarantined file back into the batch's incoming folder")
    p.add_argument("batch")
    p.add_argument("label", help="q0001, ... (see quarantine list)")
    p.set_defaults(func=cmd_quarantine_release)

    p = sub.add_parser("deidentify", help="de-identify a folder offline with the embedded keyed provider")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--option", action="append", type=_parse_option, metavar="NAME=VALUE",
                   help="a de-identification option (see docs/DEIDENTIFICATION.md); repeatable")
    p.add_argument("--report", type=Path, metavar="FILE",
                   help="write a JSON report: summary counts and, per input file, its outcome (delivered, held_back, "
                        "rejected, duplicate, leak), reason and output file name. It maps input names (PHI) to "
                        "outputs: created readable by you only (0600)")
    p.add_argument("--pixels", choices=("clean", "all-text", "hold"),
                   help="burned-in text policy (default: RELAY_PIXEL_POLICY, itself clean by default); only a "
                        "stricter one than the deployment's is accepted. Each file's record is under \"pixels\" "
                        "in --report")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="de-identify with N processes (default 1)")
    p.set_defaults(func=cmd_deidentify)

    p = sub.add_parser("verify", help="check de-identified output for identifying values of the originals "
                                      "(with RELAY_SECRET_KEY: output matched to its original, dates checked)")
    p.add_argument("original_dir", type=Path)
    p.add_argument("deidentified_dir", type=Path)
    p.add_argument("--option", action="append", type=_parse_option, metavar="NAME=VALUE",
                   help="the de-identification options the output was made with; repeatable")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func in (cmd_deidentify, cmd_verify):
            # The offline commands read their four settings without pydantic (0.15-0.2 CPU-s at every start).
            settings = OfflineSettings.from_env()
        else:
            from .config import Settings

            settings = Settings.from_env()
        return args.func(args, settings)
    except (ConfigError, RelayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The reason only: the exception's text quotes the path, and folder names may be PHI.
        print(f"error: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:
        # psycopg is imported by the commands that use the database only (deidentify and verify need none).
        psycopg = sys.modules.get("psycopg")
        if psycopg is None or not isinstance(exc, psycopg.OperationalError):
            raise
        # Not the driver's text: it can quote the URL, password included.
        print("error: cannot reach the status database (RELAY_DB_URL). After `make run`, "
              "load the stack's settings first: . .run/stack.env", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
