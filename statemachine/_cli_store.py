"""The ``ism`` commands that read a store: ``audit verify|tail|export``, ``actions``, ``status``.

Each opens the store read-only (SQLite's WAL lets it read while an engine writes) and prints
one line per item; JSON forms are for tools. ``audit verify`` exits 0 when the log is intact, 1
naming the first bad record, 2 when the store cannot be read at all.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ._audit_read import audit_pages
from .audit import AuditRecord
from .errors import InvalidRequest, StoreError
from .history import actions_from_audit
from .lifecycle import DEFAULT_LIFECYCLE
from .model import Instance
from .store import Store, open_store

__all__ = ["actions", "add_parsers", "audit", "find_instance", "read_store", "status"]

T = TypeVar("T")
KEY_ENV = "ISM_AUDIT_KEY"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the store commands."""
    audit_p = sub.add_parser("audit", help="verify, tail or export a store's audit log")
    verbs = audit_p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verify = verbs.add_parser("verify", help="check the hash chain; exit 1 naming a bad record")
    verify.add_argument("db", metavar="DB")
    verify.add_argument("--head", metavar="HASH", help="a head taken earlier: detects truncation")
    verify.add_argument(
        "--key-file", type=Path, metavar="FILE", help=f"HMAC key (default: ${KEY_ENV} if set)"
    )
    tail = verbs.add_parser("tail", help="the last records, one line each")
    tail.add_argument("db", metavar="DB")
    tail.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    export = verbs.add_parser("export", help="every record as JSON Lines")
    export.add_argument("db", metavar="DB")
    export.add_argument("--format", choices=("jsonl",), default="jsonl")
    export.add_argument("--output", type=Path, metavar="FILE", help="default: standard output")

    act = sub.add_parser("actions", help="an instance's actions (Nova's instance-actions)")
    act.add_argument("instance", metavar="NAME", help="instance name or uuid")
    act.add_argument("--db", required=True, metavar="DB")
    act.add_argument("--json", action="store_true", dest="as_json")

    st = sub.add_parser("status", help="every instance's states in a store")
    st.add_argument("--db", required=True, metavar="DB")
    st.add_argument("--json", action="store_true", dest="as_json")


async def _with_store(url: str, use: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(url, readonly=True)
    await store.open(writer="ism-cli")
    try:
        return await use(store)
    finally:
        await store.close()


def read_store(url: str, use: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store at ``url`` read-only, run ``use`` on it, close it; what every reading
    command (here and in :mod:`statemachine._cli_history`) does.

    Raises:
        StoreError: the store cannot be opened or read.
    """
    return anyio.run(_with_store, url, use)


def _key(path: Path | None) -> bytes | None:
    if path is not None:
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise InvalidRequest(f"cannot read key file {path}: {exc.strerror}") from None
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def audit(args: argparse.Namespace) -> int:
    """``ism audit verify|tail|export``."""
    if args.verb == "verify":
        key = _key(args.key_file)
        try:
            report = read_store(args.db, lambda s: s.verify(head=args.head, key=key))
        except StoreError as exc:
            print(f"ism audit verify: cannot read {args.db}: {exc}", file=sys.stderr)
            return 2
        if not report.ok:
            print(f"ism audit verify: FAILED: {report.error}", file=sys.stderr)
            return 1
        signed = " (signed head checked)" if key is not None else ""
        print(f"ism audit verify: ok: {report.count} records, head {report.head}{signed}")
        if len(report.positions) > 1:  # several writers: the head per writer, for --head
            print(f"ism audit verify: writer heads {report.positions_text}")
        return 0
    if args.verb == "tail":
        if args.n < 1:
            raise InvalidRequest("-n must be at least 1")
        for record in read_store(args.db, lambda s: _last(s, args.n)):
            print(_line(record))
        return 0
    out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        count = read_store(args.db, lambda s: _export(s, out))
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"ism audit export: {count} records to {args.output}")
    return 0


async def _last(store: Store, n: int) -> list[AuditRecord]:
    """The last ``n`` records, reading forward in pages (bounded memory)."""
    kept: collections.deque[AuditRecord] = collections.deque(maxlen=n)
    async for page in audit_pages(store):
        kept.extend(page)
    return list(kept)


async def _export(store: Store, out: Any) -> int:
    count = 0
    async for page in audit_pages(store):
        for record in page:
            out.write(json.dumps(record.as_dict(), sort_keys=True, ensure_ascii=False) + "\n")
        count += len(page)
    return count


def _state(snap: Any) -> str:
    if not snap:
        return "-"
    task = snap.get("task_state")
    return str(snap["vm_state"]) + (f"/{task}" if task else "")


def _line(record: AuditRecord) -> str:
    actor = record.get("actor") or {}
    what = record.get("outcome") or ""
    fault = record.get("fault")
    if fault:
        what += f" {fault.get('exception')}: {fault.get('message')}"
    elif record.get("message"):
        what += f" {record.get('message')}"
    return (
        f"{record.seq:>8} {record.writer}#{record.wseq} {record.get('time')} "
        f"{record.event:<9} {record.get('action') or '-':<20} {record.get('instance') or '-'} "
        f"{_state(record.get('before'))} -> {_state(record.get('after'))} "
        f"by {actor.get('user_id', '-')}/{actor.get('project_id', '-')} {what}".rstrip()
    )


def find_instance(store: Store, name: str) -> Instance:
    """The instance a command line names: by uuid, or by name (a live one before deleted ones).

    Raises:
        InvalidRequest: no instance has that name or uuid, or several live ones share the name.
    """
    matches = [i for i in store.all() if name in (i.uuid, i.name)]
    if not matches:
        raise InvalidRequest(f"no instance named {name!r} in the store")
    live = [i for i in matches if i.vm_state.value != "deleted"] or matches
    if len(live) > 1:
        raise InvalidRequest(
            f"{len(live)} instances are named {name!r}: use a uuid ("
            + ", ".join(i.uuid for i in live[:5])
            + ")"
        )
    return live[0]


def actions(args: argparse.Namespace) -> int:
    """``ism actions NAME --db DB``."""

    async def read(store: Store) -> tuple[Instance, list[Any]]:
        inst = find_instance(store, args.instance)
        return inst, actions_from_audit(await store.read_audit(instance=inst.uuid))

    inst, found = read_store(args.db, read)
    if args.as_json:
        print(json.dumps([a.as_dict() for a in found], indent=2))
        return 0
    print(f"{inst.name} ({inst.uuid}): {len(found)} actions")
    for a in found:
        print(
            f"  {a.start_time}  {a.action:<28} {a.outcome or 'running':<10} "
            f"by {a.user_id}/{a.project_id}  request {a.request_id or '-'}"
            + (f"  {a.message}" if a.message else "")
        )
        for e in a.events:
            print(
                f"      {e.start_time} -> {e.finish_time or '...'}  {e.event:<28} {e.result or ''}"
            )
    return 0


def status(args: argparse.Namespace) -> int:
    """``ism status --db DB``."""

    async def read(store: Store) -> list[Instance]:
        return list(store.all())

    found = read_store(args.db, read)
    rows = [
        {
            "name": i.name,
            "uuid": i.uuid,
            "status": DEFAULT_LIFECYCLE.status(i.vm_state, i.task_state),
            "vm_state": i.vm_state.value,
            "task_state": i.task_state.value if i.task_state is not None else None,
            "power_state": i.power_state.label,
            "host": i.host,
            "locked": i.locked,
        }
        for i in found
    ]
    if args.as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16} {'uuid':<36} {'status':<17} {'vm_state':<17} {'task_state':<22} "
          f"{'power':<9} host")  # fmt: skip
    for r in rows:
        print(
            f"{r['name']:<16} {r['uuid']:<36} {r['status']:<17} {r['vm_state']:<17} "
            f"{r['task_state'] or '-':<22} {r['power_state']:<9} {r['host'] or '-'}"
        )
    return 0
