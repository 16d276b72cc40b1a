"""The audit log: tamper-evident records, verified by ``ism audit verify`` against each attack."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.simulator import FaultRule
from statemachine.audit import GENESIS, AuditChain, AuditRecord, canonical, verify_records
from statemachine.cli import main
from statemachine.errors import ActionFailed, ActionRefused, InvalidRequest
from statemachine.store import SqliteStore
from tests.store_support import entry, instance
from tests.support import OTHER, OWNER, World, run_with_store

KEY = b"audit-test-key"


def _build(path: Path) -> None:
    """A store with accepted, state, completed, failed and refused records of two writers'
    worth of history (one writer here; the multi-writer case is unit-tested below)."""

    async def scenario(w: World) -> None:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        await w.engine.act(OWNER, "start", uuid)
        w.sim.faults.add(FaultRule(action="pause", message="password=hunter2 boom"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "pause", uuid)
        with pytest.raises(ActionRefused):
            await w.engine.act(OTHER, "stop", uuid)

    run_with_store(SqliteStore(path, hmac_key=KEY), scenario)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real store, built once; each test tampers with its own copy."""
    path = tmp_path_factory.mktemp("audit") / "ism.db"
    _build(path)
    return path


@pytest.fixture
def db(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the pristine store."""
    copy = tmp_path / "ism.db"
    shutil.copy(pristine, copy)
    return copy


@pytest.fixture
def sql(db: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection to the copy, with the append-only triggers dropped (an attacker with
    the file can do that)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    yield conn
    conn.close()


def _verify(db: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["audit", "verify", str(db), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _head(db: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, text = _verify(db, capsys)
    assert code == 0, text
    return text.rsplit("head ", 1)[1].split()[0]


def test_an_intact_log_verifies_with_count_and_head(
    db: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 0, the record count and the head hash; with the right key the signed head too."""
    code, text = _verify(db, capsys)
    assert code == 0
    count = int(text.split("ok: ")[1].split()[0])
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert count == rows
    assert count >= 10
    key = tmp_path / "key"
    key.write_bytes(KEY)
    code, text = _verify(db, capsys, "--key-file", str(key))
    assert code == 0
    assert "signed head checked" in text
    key.write_bytes(b"wrong")
    code, text = _verify(db, capsys, "--key-file", str(key))
    assert code == 1
    assert "MAC is invalid" in text


def test_the_log_records_what_happened(db: Path) -> None:
    """Accepted, state, completed, failed and refused records, with actor and scrubbed fault."""
    rows = sqlite3.connect(db).execute("SELECT body FROM audit ORDER BY seq").fetchall()
    bodies = [json.loads(r[0]) for r in rows]
    events = {b["event"] for b in bodies}
    assert {"accepted", "state", "completed", "failed", "refused"} <= events
    failed = next(b for b in bodies if b["event"] == "failed")
    assert failed["fault"]["exception"] == "InjectedFault"
    assert "hunter2" not in json.dumps(bodies)
    refused = next(b for b in bodies if b["event"] == "refused")
    assert refused["actor"] == {"user_id": "u2", "project_id": "p2", "roles": ["member"]}
    assert refused["message"].startswith("Forbidden")


def test_the_engine_cannot_edit_or_delete_records(db: Path) -> None:
    """The table refuses updates and deletes (append-only), short of dropping its triggers."""
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET event = 'state' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 1")


def test_an_edited_record_is_named(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing a body breaks its hash; exit 1 names that record."""
    sql.execute("UPDATE audit SET body = replace(body, '\"u1\"', '\"mallory\"') WHERE seq = 3")
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=3" in text
    assert "edited" in text


def test_an_edited_and_rehashed_record_breaks_the_next_link(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recomputing the edited record's hash moves the break to the record after it."""
    body, prev = sql.execute("SELECT body, prev FROM audit WHERE seq = 3").fetchone()
    forged = body.replace('"u1"', '"mallory"')
    digest = hashlib.sha256(prev.encode() + b"\n" + forged.encode()).hexdigest()
    sql.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = 3", (forged, digest))
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=4" in text
    assert "link" in text


def test_a_deleted_record_is_named(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gap in the writer's sequence names the first record after the deleted one."""
    sql.execute("DELETE FROM audit WHERE seq = 5")
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=6" in text
    assert "deleted" in text


def test_reordered_records_are_named(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """Swapping two records' places is detected at the first of them."""
    sql.execute("UPDATE audit SET seq = -1 WHERE seq = 4")
    sql.execute("UPDATE audit SET seq = 4 WHERE seq = 5")
    sql.execute("UPDATE audit SET seq = 5 WHERE seq = -1")
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=4" in text


def test_an_inserted_record_is_named(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forged record slipped in the middle, correctly hashed, still breaks the chain."""
    last = sql.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    sql.execute("UPDATE audit SET seq = seq + 1000 WHERE seq >= 4")
    sql.execute("UPDATE audit SET wseq = wseq + 1000 WHERE seq >= 1004")
    writer, prev = sql.execute("SELECT writer, hash FROM audit WHERE seq = 3").fetchone()
    chain = AuditChain(writer, 3, prev)
    record, data = chain.seal(entry("refused", action_id=None), 4)
    sql.execute(
        "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
        (4, writer, 4, "refused", None, None, "r1", data.decode(), record.prev, record.hash),
    )
    assert last > 5
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=1004" in text


def test_an_edited_index_column_is_named(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """Columns kept beside the body for queries must agree with it."""
    sql.execute("UPDATE audit SET instance = 'someone-else' WHERE seq = 2")
    code, text = _verify(db, capsys)
    assert code == 1
    assert "seq=2" in text
    assert "instance column" in text


def test_a_truncated_tail_is_caught_by_an_earlier_head(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Cutting the last records leaves a valid-looking chain; --head and the key both see it."""
    head = _head(db, capsys)
    last = sql.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    sql.execute("DELETE FROM audit WHERE seq > ?", (last - 2,))
    code, text = _verify(db, capsys)
    assert code == 0  # without a head or key, a shorter chain is a valid chain
    code, text = _verify(db, capsys, "--head", head)
    assert code == 1
    assert "truncated" in text
    key = tmp_path / "key"
    key.write_bytes(KEY)
    code, text = _verify(db, capsys, "--key-file", str(key))
    assert code == 1
    assert "truncated" in text


def test_appended_records_keep_an_old_head_valid_but_not_the_signature(
    db: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A head taken earlier stays reachable as the log grows; a forged tail has no signature."""
    head = _head(db, capsys)
    writer, wseq, prev, seq = sql.execute(
        "SELECT writer, wseq, hash, seq FROM audit ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    record, data = AuditChain(writer, wseq, prev).seal(entry("refused", action_id=None), seq + 1)
    sql.execute(
        "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
        (seq + 1, writer, wseq + 1, "refused", None, None, "r1", data.decode(),
         record.prev, record.hash),
    )  # fmt: skip
    code, _ = _verify(db, capsys, "--head", head)
    assert code == 0
    key = tmp_path / "key"
    key.write_bytes(KEY)
    code, text = _verify(db, capsys, "--key-file", str(key))
    assert code == 1
    assert "unsigned tail" in text


def test_an_unreadable_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file or a file that is not a database: exit 2 and one line, nothing created."""
    code, text = _verify(tmp_path / "missing.db", capsys)
    assert code == 2
    assert "no database" in text
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    code, text = _verify(junk, capsys)
    assert code == 2
    assert len(text.strip().splitlines()) == 1


def _records(writers: list[str], n: int) -> list[AuditRecord]:
    chains = {w: AuditChain(w) for w in writers}
    out = []
    for i in range(n):
        chain = chains[writers[i % len(writers)]]
        out.append(chain.seal(entry("state", after=instance()), i + 1)[0])
    return out


def test_several_writers_interleave_in_one_verifiable_log() -> None:
    """Chains per writer plus a global order verify together; each tampering kind is named."""
    records = _records(["a", "b", "c"], 30)
    assert verify_records(records).ok
    assert records[0].prev == GENESIS
    assert records[3].prev == records[0].hash  # a's chain skips b's and c's records
    head = verify_records(records[:20]).head
    assert verify_records(records, head=head).ok
    truncated = [r for r in records if not (r.writer == "b" and r.wseq > 5)]
    report = verify_records(truncated, head=verify_records(records).head)
    assert not report.ok
    assert "truncated" in (report.error or "")
    swapped = [*records[:4], records[5], records[4], *records[6:]]
    report = verify_records(swapped)
    assert report.bad_seq == 5  # read in order, seq 5 comes after seq 6
    assert "reordered" in (report.error or "")
    dropped = [r for r in records if r.seq != 8]
    report = verify_records(dropped)
    assert report.bad_seq == 11
    assert "deleted" in (report.error or "")


def test_the_hash_is_over_the_canonical_encoding() -> None:
    """Key order and whitespace do not change a record's hash; any field's value does."""
    record = _records(["a"], 1)[0]
    body = dict(reversed(list(record.body.items())))
    assert canonical(body) == canonical(record.body)
    digest = hashlib.sha256(GENESIS.encode() + b"\n" + canonical(record.body)).hexdigest()
    assert digest == record.hash
    assert b" " not in canonical({"a": [1, 2], "b": {"c": None}})


def test_a_per_writer_head_survives_commits_out_of_seq_order() -> None:
    """With several writers a record may commit after one with a higher seq. A head read at
    that moment names a point the final seq order never passes (the combined hash then reads
    as a truncation); given per writer it still verifies, and still catches a truncated one."""
    records = _records(["a", "b"], 20)  # odd seq: a, even seq: b
    # read while b's #5 (seq 10) was not yet committed but a's #6 (seq 11) was
    early = verify_records([r for r in records[:11] if r.seq != 10])
    assert early.ok
    assert verify_records(records, head=early.positions_text).ok
    assert not verify_records(records, head=early.head).ok  # the single hash cannot tell
    cut = [r for r in records if not (r.writer == "b" and r.wseq > 8)]
    report = verify_records(cut, head=verify_records(records).positions_text)
    assert not report.ok
    assert "truncated" in (report.error or "")
    with pytest.raises(InvalidRequest):
        verify_records(records, head="a#x:y")
