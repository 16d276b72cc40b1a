"""ism's pytest plugin on test files of its own, as other projects would write them.

Each test writes a small test module into a fresh directory and runs pytest on it in-process
(pytester), with pytest-asyncio in its default strict mode and anyio's plugin, both loaded from
their entry points as ism's own plugin is.
"""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
import asyncio

import anyio
import pytest

from statemachine import RequestContext, VirtualTimeLoop

OWNER = RequestContext(user_id="u1", project_id="p1", roles={"member"})
SMALL = {"vcpus": 1, "memory_mb": 512, "root_gb": 1}


async def create(engine, name="vm1"):
    return (await engine.create(OWNER, name=name, flavor=SMALL, image="cirros")).instance.uuid
"""

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def _run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=HEADER + textwrap.dedent(body))
    return pytester.runpytest("-p", "no:cacheprovider", "-W", "error", *args)


def test_a_module_scoped_loop_is_shared_and_keeps_its_clock(pytester: pytest.Pytester) -> None:
    """With loop_scope="module", both tests and their engines run on one virtual loop."""
    result = _run(
        pytester,
        """
        pytestmark = pytest.mark.asyncio(loop_scope="module")
        LOOPS = []

        async def test_first(ism_engine, ism_clock):
            LOOPS.append(asyncio.get_running_loop())
            await create(ism_engine)
            await ism_clock.advance_to(1000)

        async def test_second(ism_engine, ism_clock):
            assert asyncio.get_running_loop() is LOOPS[0]
            assert isinstance(LOOPS[0], VirtualTimeLoop)
            assert ism_clock.now() >= 1000  # the shared clock went on counting
            await create(ism_engine)
        """,
    )
    result.assert_outcomes(passed=2)


def test_other_async_tests_keep_an_ordinary_loop(pytester: pytest.Pytester) -> None:
    """Tests that use no ism fixture run on asyncio's usual loop, under their usual names."""
    result = _run(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_plain():
            assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)

        @pytest.mark.asyncio
        async def test_ism(ism_engine):
            assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
        """,
        "-v",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::test_plain PASSED*", "*::test_ism PASSED*"])


def test_a_conftest_loop_factory_still_decides_for_other_tests(pytester: pytest.Pytester) -> None:
    """A project's own pytest_asyncio_loop_factories keeps its tests; ism tests stay virtual."""
    pytester.makeconftest(
        """
        import asyncio

        class MarkedLoop(asyncio.SelectorEventLoop):
            pass

        def pytest_asyncio_loop_factories(config, item):
            return {"marked": MarkedLoop}
        """
    )
    result = _run(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_plain():
            assert type(asyncio.get_running_loop()).__name__ == "MarkedLoop"

        @pytest.mark.asyncio
        async def test_ism(ism_clock):
            await ism_clock.advance(10)
        """,
    )
    result.assert_outcomes(passed=2)


def test_anyio_tests_run_on_virtual_time(pytester: pytest.Pytester) -> None:
    """An anyio test module choosing virtual_anyio_backend() gets the engine on virtual time."""
    result = _run(
        pytester,
        """
        from statemachine.testing import virtual_anyio_backend

        @pytest.fixture
        def anyio_backend():
            return virtual_anyio_backend()

        @pytest.mark.anyio
        @pytest.mark.ism(config={"resize_confirm_window": 3600})
        async def test_resize_confirms_itself(ism_engine, ism_clock, ism_capture):
            assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
            uuid = await create(ism_engine)
            await ism_engine.act(OWNER, "resize", uuid, {"flavor": {**SMALL, "vcpus": 2}})
            await ism_clock.advance(3600)
            await ism_capture.wait_for("instance.resize_confirm.end", timeout=60)
        """,
    )
    result.assert_outcomes(passed=1)


def test_anyio_on_an_ordinary_loop_needs_virtual_time_off(pytester: pytest.Pytester) -> None:
    """anyio's default loop is refused with the fix spelled out, unless virtual_time=False."""
    result = _run(
        pytester,
        """
        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_refused(ism_engine):
            pass

        @pytest.mark.anyio
        @pytest.mark.ism(virtual_time=False)
        async def test_real_time(ism_engine):
            start = anyio.current_time()
            await create(ism_engine)  # the simulator answers at once on real time
            assert anyio.current_time() - start < 5
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ism_engine runs on virtual time, but this loop is not*"])


def test_a_sync_test_cannot_use_the_engine(pytester: pytest.Pytester) -> None:
    """A synchronous test asking for ism_engine errors with how to mark it."""
    result = _run(
        pytester,
        """
        def test_sync(ism_engine):
            pass
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ism_engine is async; use it from a test marked*"])


def test_a_failing_test_shows_notifications_and_instances(pytester: pytest.Pytester) -> None:
    """A failed ism test's report carries the last notifications and the instances' states."""
    result = _run(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_fails(ism_engine, ism_capture):
            uuid = await create(ism_engine)
            await ism_engine.wait_for_state(uuid, vm_state="stopped", timeout=5)
        """,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * did not reach {'vm_state': 'stopped'} within 5 s; it is {'vm_state': 'active'}*",
            "*- ism notifications -*",
            "*instance.create.end (vm_state=active task_state=None power_state=running)",
            "*- ism instances -*",
            "* vm1: vm_state=active task_state=None power_state=running host=compute*",
        ]
    )


def test_fixtures_can_be_overridden(pytester: pytest.Pytester) -> None:
    """A conftest overriding ism_config and ism_hosts configures every test below it."""
    pytester.makeconftest(
        """
        import pytest
        from statemachine import Config

        @pytest.fixture
        def ism_config():
            return Config(notify_on_state_change="vm_and_task_state")

        @pytest.fixture
        def ism_hosts():
            return ("east", "west", "north")
        """
    )
    result = _run(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_configured(ism_engine, ism_simulator, ism_capture):
            assert len(await ism_simulator.driver.hosts()) == 3
            uuid = await create(ism_engine)
            assert ism_capture.count("instance.update", instance=uuid) > 0
        """,
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("ism(seeds=3)", "mark.ism takes only keyword arguments *, not *'seeds'*"),
        ("ism(3)", "mark.ism takes only keyword arguments *"),
        ("ism(virtual_time='yes')", "*mark.ism virtual_time must be True or False"),
        ("ism(config={'resize_window': 3})", "*mark.ism config: unknown config options *"),
        ("ism(config={'notify_on_state_change': 'x'})", "*mark.ism config: *notify_on_state*"),
        ("ism(hosts='compute1')", "*mark.ism hosts must be a sequence of host names"),
    ],
)
def test_a_malformed_marker_is_reported(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    """mark.ism with an unknown option or a bad value fails naming the problem."""
    result = _run(
        pytester,
        f"""
        @pytest.mark.asyncio
        @pytest.mark.{marker}
        async def test_marked(ism_engine):
            pass
        """,
    )
    result.stdout.fnmatch_lines([f"*{message}*"])
    assert result.ret != 0


def test_the_same_seed_gives_the_same_run(pytester: pytest.Pytester) -> None:
    """Two runs of one seeded test emit identical envelopes: uuids, timestamps, ids, order."""
    result = _run(
        pytester,
        """
        RUNS = []

        @pytest.mark.asyncio
        @pytest.mark.parametrize("run", [1, 2])
        @pytest.mark.ism(seed=42, config={"resize_confirm_window": 600})
        async def test_scripted(run, ism_engine, ism_simulator, ism_capture, ism_clock):
            ism_simulator.fail_randomly("resize", 0.5)
            for name in ("a", "b", "c"):
                uuid = await create(ism_engine, name)
                await (await ism_engine.submit(OWNER, "resize", uuid,
                                               {"flavor": {**SMALL, "vcpus": 2}})).wait()
            await ism_clock.advance(3600)
            await ism_engine.wait_idle(timeout=3600)
            RUNS.append([n.envelope() for n in ism_capture.notifications])

        def test_compare():
            assert len(RUNS) == 2 and len(RUNS[0]) > 10
            assert RUNS[0] == RUNS[1]
        """,
    )
    result.assert_outcomes(passed=3)


def test_recorded_coverage_is_printed_in_the_summary(pytester: pytest.Pytester) -> None:
    """A value recorded under COVERAGE_PROPERTY appears in the terminal summary."""
    result = _run(
        pytester,
        """
        from statemachine.testing.plugin import COVERAGE_PROPERTY

        def test_records(record_property):
            record_property(COVERAGE_PROPERTY, "transition coverage: 100.0% of 3 transitions")
        """,
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*- ism transition coverage -*", "*::test_records: transition coverage: 100.0% of 3*"]
    )


def test_pytest_asyncio_auto_mode_works_too(pytester: pytest.Pytester) -> None:
    """In pytest-asyncio's auto mode, unmarked async tests get the fixtures on virtual time."""
    pytester.makeini(INI + "asyncio_mode = auto\n")
    pytester.makepyfile(
        test_auto=HEADER
        + textwrap.dedent(
            """
            async def test_unmarked(ism_engine, ism_clock):
                assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
                await create(ism_engine)
                await ism_clock.advance(60)
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)
