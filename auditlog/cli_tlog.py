"""`auditlog checkpoint`, `verify`, `verify-export` and `signing-key`: the tamper evidence."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import orjson

from producers.contract.tlog.note import NoteError, Verifier
from stream import signing_key
from stream.checkpointer import Checkpointer, CheckpointSettings


class TlogError(Exception):
    """A mistake of the command line's user (exit code 2)."""


def _ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TlogError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise TlogError(f"{text!r} has no time zone: add Z or an offset")
    return int(when.timestamp() * 1000)


def _verifiers(args: argparse.Namespace, settings: CheckpointSettings) -> list[Verifier]:
    given: list[str] = list(args.public_key or [])
    for path in args.public_key_file or []:
        given += [line for line in Path(path).read_text().splitlines() if line.strip()]
    try:
        verifiers = [Verifier.parse(k) for k in given]
    except NoteError as exc:
        raise TlogError(str(exc)) from None
    if not verifiers:
        verifiers = signing_key.published_verifiers(settings.anchor_dir)
        if verifiers:
            print(
                f"note: trusting the verifier keys published in {settings.anchor_dir}; for a check that does "
                "not trust this machine, pin them with --public-key or --public-key-file",
                file=sys.stderr,
            )
    if not verifiers:
        raise TlogError(
            "no verifier key: give --public-key or --public-key-file "
            f"(none published in {settings.anchor_dir})"
        )
    return verifiers


def _settings(args: argparse.Namespace) -> CheckpointSettings:
    from storage.store import StoreSettings

    settings = CheckpointSettings()
    if getattr(args, "checkpoint_dir", None):
        settings = settings.model_copy(update={"dir": args.checkpoint_dir})
    store = StoreSettings()
    if getattr(args, "store", None):
        store = store.model_copy(update={"path": args.store})
    return settings.beside(store)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from auditlog.cli import _open_store

    store = _open_store(args)
    settings = _settings(args)
    checkpointer = Checkpointer.from_settings(store.tree, settings)
    for made in checkpointer.run(args.log or None, force=True):
        print(orjson.dumps({"log": made.log, "size": made.checkpoint.size, "note": made.note}).decode())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from auditlog.cli import _open_store
    from auditlog.verify_store import verify_store

    settings = _settings(args)
    verifiers = _verifiers(args, settings)
    store = _open_store(args)
    reports = verify_store(
        store.tree,
        verifiers=verifiers,
        origin=settings.origin,
        anchor_dir=None if args.no_anchor else settings.anchor_dir,
        logs=args.log or None,
        since_ms=_ms(args.since),
        until_ms=_ms(args.until),
        expired_before_ms=_ms(args.expired_before),
    )
    for report in reports:
        print(orjson.dumps(report.to_json()).decode())
        for f in report.findings:
            print(f"{f.kind.upper():10} {f.log}: {f.detail}", file=sys.stderr)
        if report.forks:
            print(
                f"{'NOTE':10} {report.log}: {report.forks} checkpoints share their predecessor with "
                "another (two signers at once); both branches verify against the leaves",
                file=sys.stderr,
            )
    bad = sum(len(r.findings) for r in reports)
    leaves = sum(r.leaves for r in reports)
    print(
        f"{'FAILED' if bad else 'OK'}: {sum(1 for r in reports if r.log)} logs, {leaves} leaves, "
        f"{bad} findings",
        file=sys.stderr,
    )
    return 1 if bad else 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    from auditlog.verify_export import verify_export

    try:
        verifiers = [Verifier.parse(k) for k in args.public_key]
    except NoteError as exc:
        raise TlogError(str(exc)) from None
    result = verify_export(args.file.read_bytes(), verifiers, origin=args.origin)
    print(orjson.dumps(result.to_json()).decode())
    for problem in result.problems:
        print(f"FAILED {problem}", file=sys.stderr)
    print(
        f"{'FAILED' if result.problems else 'OK'}: {result.verified} of {result.rows} rows verified",
        file=sys.stderr,
    )
    return 1 if result.problems else 0


def cmd_signing_key(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "rotate":
        signer = signing_key.rotate(
            settings.signing_key_file, name=settings.origin, publish_dir=settings.anchor_dir
        )
    else:
        signer = settings.signer()
    print(signer.verifier)
    return 0


def _wrap(func: object) -> object:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)  # type: ignore[operator, no-any-return]
        except TlogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from auditlog.cli import _store_args

    def dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--checkpoint-dir",
            type=Path,
            help="anchor files and published verifier keys "
            "(env AUDITLOG_CHECKPOINT_DIR; default: the store's folder name + -tlog)",
        )

    p = sub.add_parser("checkpoint", help="sign a checkpoint of every log (or --log) now")
    _store_args(p)
    dir_arg(p)
    p.add_argument("--log", action="append", help="only this log (repeatable)")
    p.set_defaults(func=_wrap(cmd_checkpoint))

    p = sub.add_parser(
        "verify",
        help="check the store against its signed checkpoints; names what was altered, inserted, deleted, "
        "reordered or truncated; exit 1 on any finding",
    )
    _store_args(p)
    dir_arg(p)
    p.add_argument("--log", action="append", help="only this log (repeatable)")
    p.add_argument("--since", help="check rows that occurred at or after this time (ISO 8601)")
    p.add_argument("--until", help="check rows that occurred before this time (ISO 8601)")
    p.add_argument("--public-key", action="append", help="a trusted verifier key (repeatable)")
    p.add_argument("--public-key-file", action="append", type=Path, help="a file of verifier keys")
    p.add_argument(
        "--expired-before",
        help="rows of events older than this were removed by retention: their leaves count as expired",
    )
    p.add_argument(
        "--no-anchor", action="store_true", help="ignore the checkpoint files of the anchor directory"
    )
    p.set_defaults(func=_wrap(cmd_verify))

    p = sub.add_parser("verify-export", help="verify an NDJSON export with proofs offline, without the store")
    p.add_argument("file", type=Path)
    p.add_argument("--public-key", action="append", required=True, help="a trusted verifier key (repeatable)")
    p.add_argument(
        "--origin",
        help="the installation's checkpoint origin (AUDITLOG_CHECKPOINT_ORIGIN); default: the key's name",
    )
    p.set_defaults(func=_wrap(cmd_verify_export))

    p = sub.add_parser(
        "signing-key", help="show (creating it on first use) or rotate the checkpoint signing key"
    )
    _store_args(p)
    dir_arg(p)
    p.add_argument("action", choices=("show", "rotate"))
    p.set_defaults(func=_wrap(cmd_signing_key))
