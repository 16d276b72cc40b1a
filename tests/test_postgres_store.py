"""What the PostgreSQL store adds to the contract: many engines, one server, its schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import asyncpg
import attrs
import pytest

from statemachine.clock import real_time, run_virtual
from statemachine.errors import Conflict, DuplicateRequest, InstanceNotFound, StoreError
from statemachine.store import PostgresStore, RequestRecord, Write, open_store
from statemachine.store._postgres_schema import MIGRATIONS, advisory_key
from statemachine.store._sqlite_schema import Migration
from tests.postgres_support import SERVER, require_postgres
from tests.store_support import KEY, STOPPING, entry, instance, note

UUID = instance().uuid


async def _opened(url: str, writer: str, **options: object) -> PostgresStore:
    store = PostgresStore(url, hmac_key=KEY, **options)  # type: ignore[arg-type]
    await store.open(writer=writer)
    return store


async def _insert(store: PostgresStore, uuid: str = UUID) -> None:
    inst = instance(uuid=uuid)
    store.stage(None, inst)
    unit = Write(instance=inst, audit=(entry("accepted", after=inst),))
    assert await store.persist([unit]) == [None]


async def _stop(store: PostgresStore, uuid: str = UUID) -> Conflict | None:
    """Stage and persist a stop's acceptance from the working set's record."""
    old = store.get(uuid)
    new = old.evolve(**STOPPING)
    store.stage(old, new)
    (result,) = await store.persist([Write(instance=new, expected=old, audit=(entry(after=new),))])
    return result


async def _sql(url: str, statement: str, *, script: bool = False) -> object:
    """Run one statement (or a ``script`` of several) in the schema, as its owner would, not
    through the store; return the first value of a statement."""
    schema = PostgresStore(url).schema
    with real_time():  # a real round trip: the virtual clock must not jump meanwhile
        conn = await asyncpg.connect(SERVER, server_settings={"search_path": schema})
        try:
            if script:
                return await conn.execute(statement)
            return await conn.fetchval(statement)
        finally:
            await conn.close()


def test_one_engine_per_writer_name_others_and_readers_alongside(pg_url: str) -> None:
    """A second engine with the same writer name is refused; another writer and a read-only
    reader work beside the first; the name is free again once the first closes."""

    async def main() -> None:
        first = await _opened(pg_url, "compute1")
        with pytest.raises(StoreError, match="another engine"):
            await _opened(pg_url, "compute1")
        second = await _opened(pg_url, "compute2")
        await _insert(first)
        reader = PostgresStore(pg_url, readonly=True)
        await reader.open(writer="cli")
        assert (await reader.verify(key=KEY)).ok
        with pytest.raises(StoreError, match="read-only"):
            await reader.persist([Write()])
        await reader.close()
        await first.close()
        again = await _opened(pg_url, "compute1")
        assert again.generation == 3  # compute1, compute2, compute1 again
        for store in (again, second):
            await store.close()

    run_virtual(main)


def test_a_killed_engine_releases_its_writer_name(pg_url: str) -> None:
    """The writer lock is the server's: it goes when the holder's process dies by SIGKILL."""
    code = (
        "import sys, anyio\n"
        "from statemachine.store import PostgresStore\n"
        "async def main():\n"
        f"    store = PostgresStore({pg_url!r})\n"
        "    await store.open(writer='compute1')\n"
        "    print('open', flush=True)\n"
        "    sys.stdin.readline()\n"
        "anyio.run(main)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "open"

            async def refused() -> None:
                with pytest.raises(StoreError, match="another engine"):
                    await _opened(pg_url, "compute1")

            run_virtual(refused)
        finally:
            proc.kill()
            proc.wait(timeout=10)

    async def reopen() -> None:
        # wait (bounded by the server's statement_timeout) until the dead session is gone
        key = advisory_key("writer", PostgresStore(pg_url).schema, "compute1")
        with real_time():
            conn = await asyncpg.connect(SERVER, server_settings={"statement_timeout": "10000"})
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", key)
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
            finally:
                await conn.close()
        store = await _opened(pg_url, "compute1")
        await store.close()

    run_virtual(reopen)


def test_a_stale_swap_loses_in_storage_and_the_working_set_is_reloaded(pg_url: str) -> None:
    """Two engines hold the same record; the second to persist a change from it gets Conflict,
    and its working set then holds what the first wrote."""

    async def main() -> None:
        a = await _opened(pg_url, "compute1")
        await _insert(a)
        b = await _opened(pg_url, "compute2")
        assert await _stop(a) is None
        assert b.get(UUID).task_state is None  # b's cache does not know
        lost = await _stop(b)
        assert isinstance(lost, Conflict)
        assert lost.actual == {"version": "changed in storage"}
        assert b.get(UUID) == a.get(UUID)
        fresh = instance(uuid="00000000-0000-4000-8000-00000000000f")
        a.stage(None, fresh)
        b.stage(None, fresh)
        assert await a.persist([Write(instance=fresh)]) == [None]
        (dup,) = await b.persist([Write(instance=fresh)])
        assert isinstance(dup, Conflict)  # the uuid exists in storage
        records = await a.read_audit(instance=UUID)
        assert [r.writer for r in records] == ["compute1", "compute1"]
        assert (await a.verify(key=KEY)).ok
        await a.close()
        await b.close()

    run_virtual(main)


def test_each_engine_delivers_its_own_outbox(pg_url: str) -> None:
    """unsent() lists the opening writer's messages; sequences are per instance, fleet-wide."""

    async def main() -> None:
        a = await _opened(pg_url, "compute1")
        b = await _opened(pg_url, "compute2")
        one = instance(uuid="00000000-0000-4000-8000-00000000000a")
        two = instance(uuid="00000000-0000-4000-8000-00000000000b")
        a.stage(None, one)
        b.stage(None, two)
        first, second = note(one), note(two)
        assert await a.persist([Write(instance=one, notifications=(first,))]) == [None]
        assert await b.persist([Write(instance=two, notifications=(second,))]) == [None]
        assert [n.message_id for _, n in await a.unsent(10)] == [first.message_id]
        assert [n.message_id for _, n in await b.unsent(10)] == [second.message_id]
        await a.persist([], sent=[first.message_id])
        assert await a.unsent(10) == []
        assert await a.outbox_counts() == (2, 1)
        await a.close()
        c = await _opened(pg_url, "compute3")
        assert c.last_sequences() == {one.uuid: first.sequence, two.uuid: second.sequence}
        await b.close()
        await c.close()

    run_virtual(main)


@contextmanager
def _row_locked(url: str, uuid: str, seconds: float) -> Iterator[None]:
    """Another session holds ``uuid``'s row lock for ``seconds`` of real time (a slow server),
    from a thread of its own; the block runs once the lock is held."""
    locked = threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        schema = PostgresStore(url).schema
        conn = await asyncpg.connect(SERVER, server_settings={"search_path": schema})
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM instances WHERE uuid = $1 FOR UPDATE", uuid)
                locked.set()
                await conn.execute("SELECT pg_sleep($1)", seconds)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported below, in the test's thread
            failure.append(exc)
            locked.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert locked.wait(timeout=30)
        assert not failure, failure
        yield
    finally:
        thread.join(timeout=60)
        assert not failure, failure


def test_virtual_time_flows_with_real_time_while_the_server_works(pg_url: str) -> None:
    """A commit that waits 0.3 s (real) for a row lock lets the virtual clock move by about
    that, not jump to a timer 10 s away; the server's statement_timeout bounds such a wait."""

    async def main() -> None:
        store = await _opened(pg_url, "compute1")
        await _insert(store)
        with _row_locked(pg_url, UUID, 0.3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 10.0)  # a timer the clock would jump to
                virtual, real = anyio.current_time(), time.monotonic()
                assert await _stop(store) is None
                moved, waited = anyio.current_time() - virtual, time.monotonic() - real
                assert waited >= 0.2
                assert moved <= waited + 0.01  # flowed with real time, never jumped
                tg.cancel_scope.cancel()
        impatient = await _opened(pg_url, "compute2", statement_timeout=0.1)
        with _row_locked(pg_url, UUID, 1.0):
            old = impatient.get(UUID)  # current: its swap would win, after the lock
            with pytest.raises(StoreError, match="statement timeout"):
                await impatient.persist([Write(instance=old.evolve(**STOPPING), expected=old)])
        await store.close()
        await impatient.close()

    run_virtual(main)


def test_the_schema_migrates_step_by_step_and_refuses_newer(pg_url: str) -> None:
    """A schema gains a new step's change on open; a schema newer than ism is refused, by
    writers and readers; a failing step is rolled back, leaving the previous version."""
    latest = MIGRATIONS[-1].version
    extra = Migration(latest + 1, "a column", ("ALTER TABLE instances ADD COLUMN note TEXT",))
    broken = Migration(latest + 2, "a bad step", ("CREATE TABLE x (a int)", "NOT SQL AT ALL"))

    async def main() -> None:
        store = await _opened(pg_url, "a")
        await store.close()
        store = await _opened(pg_url, "a", migrations=(*MIGRATIONS, extra))
        await store.close()
        with pytest.raises(StoreError, match="newer than this ism"):
            await _opened(pg_url, "a")
        with pytest.raises(StoreError, match=f"this ism reads {latest}"):
            await PostgresStore(pg_url, readonly=True).open(writer="cli")
        with pytest.raises(StoreError, match=f"migration to version {latest + 2} failed"):
            await _opened(pg_url, "a", migrations=(*MIGRATIONS, extra, broken))
        assert await _sql(pg_url, "SELECT MAX(version) FROM ism_migrations") == latest + 1
        assert await _sql(
            pg_url,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'instances' AND column_name = 'note'",
        ) == 1  # fmt: skip
        assert await _sql(pg_url, "SELECT to_regclass('x')") is None

    run_virtual(main)


def test_the_audit_log_is_append_only_and_tampering_is_named(pg_url: str) -> None:
    """UPDATE, DELETE and TRUNCATE of audit records fail; with the triggers disabled an edit
    is found by verify, which names the record."""

    async def main() -> None:
        store = await _opened(pg_url, "compute1")
        await _insert(store)
        assert await _stop(store) is None
        for statement in ("UPDATE audit SET event = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await _sql(pg_url, statement)
        seq = (await store.read_audit())[1].seq
        await _sql(
            pg_url,
            "ALTER TABLE audit DISABLE TRIGGER USER; "
            "UPDATE audit SET body = replace(body, 'powering-off', 'powering-on'); "
            "ALTER TABLE audit ENABLE TRIGGER USER",
            script=True,
        )
        report = await store.verify()
        assert not report.ok
        assert report.bad_seq == seq
        assert "edited" in (report.error or "")
        await store.close()

    run_virtual(main)


def test_bad_locations_are_one_line_store_errors(pg_url: str) -> None:
    """No server, no database, a bad schema name, a reader on an empty schema: StoreError
    with one line each, and open_store routes both URL schemes to this store."""
    require_postgres()
    assert isinstance(open_store("postgres://127.0.0.1/test"), PostgresStore)
    assert open_store(pg_url).schema == PostgresStore(pg_url).schema  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="schema name"):
        PostgresStore("postgresql://127.0.0.1/test?schema=Robert');DROP")
    with pytest.raises(StoreError, match="not a PostgreSQL URL"):
        PostgresStore("mysql://127.0.0.1/test")

    async def main() -> None:
        for url, says in (
            ("postgresql://postgres:secret@127.0.0.1:1/test", "cannot connect"),
            ("postgresql://postgres@127.0.0.1/ism_no_such_database", "cannot connect"),
        ):
            with pytest.raises(StoreError, match=says) as caught:
                await PostgresStore(url).open(writer="a")
            assert "\n" not in str(caught.value)
            assert "secret" not in str(caught.value)
        with pytest.raises(StoreError, match="no ism schema"):
            await PostgresStore(pg_url, readonly=True).open(writer="cli")

    run_virtual(main)


def test_a_request_id_recorded_by_another_engine_rolls_back_the_whole_unit(pg_url: str) -> None:
    """A unit whose swap wins but whose request id another engine already recorded writes
    nothing: its insert is undone in storage and in the working set."""

    async def main() -> None:
        a = await _opened(pg_url, "compute1")
        await _insert(a)
        b = await _opened(pg_url, "compute2")
        request = RequestRecord("req-1", "a1", "stop", UUID)
        old = a.get(UUID)
        new = old.evolve(**STOPPING)
        a.stage(old, new)
        assert await a.persist([Write(instance=new, expected=old, request=request)]) == [None]
        other = instance(uuid="00000000-0000-4000-8000-00000000000c")
        b.stage(None, other)
        (result,) = await b.persist(
            [Write(instance=other, request=attrs.evolve(request, action_id="a2"))]
        )
        assert isinstance(result, DuplicateRequest)
        assert await b.find_request("req-1") == request
        assert other.uuid not in {i.uuid for i in b.all()}
        assert (
            await _sql(pg_url, f"SELECT count(*) FROM instances WHERE uuid = '{other.uuid}'") == 0
        )
        await a.close()
        await b.close()

    run_virtual(main)


def test_a_batch_that_deadlocks_is_retried_not_failed(pg_url: str) -> None:
    """Another session takes two request ids in the opposite order; PostgreSQL aborts the
    store's transaction as a deadlock, the store runs it again, and both units then find
    their ids taken: DuplicateRequest each, nothing written, no StoreError."""
    schema = PostgresStore(pg_url).schema
    waiting = threading.Event()
    done = threading.Event()
    failure: list[BaseException] = []

    async def other_session() -> None:
        conn = await asyncpg.connect(
            SERVER, server_settings={"search_path": schema, "deadlock_timeout": "10s"}
        )
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO requests VALUES ('r2', 'x', 'stop', NULL)")
                waiting.set()
                # until the store's transaction waits for r2 (bounded by statement_timeout)
                await conn.execute(
                    "SET LOCAL statement_timeout = 20000; DO $$ BEGIN WHILE NOT EXISTS "
                    "(SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'transactionid')"
                    " LOOP PERFORM pg_sleep(0.01); END LOOP; END $$"
                )
                await conn.execute("INSERT INTO requests VALUES ('r1', 'x', 'stop', NULL)")
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(other_session())
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)
        finally:
            waiting.set()
            done.set()

    async def main() -> None:
        store = await _opened(pg_url, "compute1")
        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert waiting.wait(timeout=30)
            units = []
            for n, rid in ((1, "r1"), (2, "r2")):
                inst = instance(uuid=f"00000000-0000-4000-8000-00000000001{n}")
                store.stage(None, inst)
                units.append(Write(instance=inst, request=RequestRecord(rid, "a", "stop", None)))
            results = await store.persist(units)
            assert [type(r) for r in results] == [DuplicateRequest, DuplicateRequest]
            assert list(store.all()) == []
            assert await _sql(pg_url, "SELECT count(*) FROM instances") == 0
        finally:
            assert done.wait(timeout=60)
            thread.join(timeout=10)
            await store.close()
        assert not failure, failure

    run_virtual(main)


def test_a_lost_connection_is_a_one_line_store_error(pg_url: str) -> None:
    """The server ends the engine's session (a restart, an admin): the next commit is a
    StoreError of one line, and the chain is where it was."""

    async def main() -> None:
        store = await _opened(pg_url, "compute1")
        await _insert(store)
        assert store._conn is not None
        pid = store._conn.get_server_pid()  # this store's session, no one else's
        assert await _sql(pg_url, f"SELECT pg_terminate_backend({int(pid)})")
        wseq = store._chain.wseq if store._chain else None
        with pytest.raises(StoreError, match="commit to") as caught:
            await _stop(store)
        assert "\n" not in str(caught.value)
        assert (store._chain.wseq if store._chain else None) == wseq
        await store.close()

    run_virtual(main)


def test_refresh_heartbeats_and_meta_are_shared_by_the_engines(pg_url: str) -> None:
    """refresh() brings another engine's change into the working set (never an older one);
    heartbeats and meta values written by one engine are read by another."""

    async def main() -> None:
        a = await _opened(pg_url, "compute1")
        await _insert(a)
        b = await _opened(pg_url, "compute2")
        assert await _stop(a) is None
        assert b.get(UUID).task_state is None
        assert await b.refresh(UUID) == a.get(UUID)
        assert b.get(UUID) == a.get(UUID)
        with pytest.raises(InstanceNotFound):
            await b.refresh("00000000-0000-4000-8000-0000000000ff")
        at = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
        await a.heartbeat("compute1", at)
        await b.heartbeat("compute2", at)
        await a.heartbeat("compute1", at + dt.timedelta(seconds=10))
        assert await b.services() == {"compute1": at + dt.timedelta(seconds=10), "compute2": at}
        assert await b.get_meta("lifecycle") is None
        await a.set_meta("lifecycle", "v1")
        await a.set_meta("lifecycle", "v2")
        assert await b.get_meta("lifecycle") == "v2"
        reader = PostgresStore(pg_url, readonly=True)
        await reader.open(writer="cli")
        with pytest.raises(StoreError, match="read-only"):
            await reader.heartbeat("cli", at)
        await reader.close()
        await a.close()
        await b.close()

    run_virtual(main)


class _Blackhole:
    """A TCP relay to the server that, once ``silence`` is set, swallows what it is sent and
    answers nothing: a network partition, as the client sees one."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.silence = threading.Event()
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.target, timeout=5)
            relay = threading.Thread(target=self._relay, args=(client, server), daemon=True)
            self.threads.append(relay)
            relay.start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        with client, server:
            while not self.stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not self.silence.is_set():
                        peers[sock].sendall(data)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()


def test_a_silent_network_is_a_store_error_not_a_hang(pg_url: str) -> None:
    """The server stops answering (a partition): an operation fails as a one-line StoreError
    once statement_timeout and connect_timeout have passed, instead of waiting for ever."""
    parts = urllib.parse.urlsplit(pg_url)
    proxy = _Blackhole((parts.hostname or "127.0.0.1", parts.port or 5432))
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))

    async def main() -> float:
        store = await _opened(url, "compute1", statement_timeout=1, connect_timeout=1)
        await _insert(store)
        proxy.silence.set()
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await store.find_request("r-1")
        assert "\n" not in str(caught.value)
        waited = time.monotonic() - started
        await store.close()  # the dead session is dropped, within its own bound
        return waited

    outcome: list[float | BaseException] = []

    def run() -> None:
        try:
            outcome.append(run_virtual(main))
        except BaseException as exc:  # carried to the test's thread
            outcome.append(exc)

    # in a thread of its own, so that a regression fails this test instead of hanging the suite
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    proxy.close()
    assert not worker.is_alive(), "still waiting after 60 s: the client has no bound"
    (waited,) = outcome
    if isinstance(waited, BaseException):
        raise waited
    assert 1.5 < waited < 10  # the 2 s bound, in real seconds, not never
