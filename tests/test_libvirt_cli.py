"""``ism simulate --driver libvirt --uri URI``: the fleet on libvirt, within its capabilities."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import Capabilities, PowerState
from statemachine._simulate_libvirt import supported
from statemachine.cli import main
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from tests.libvirt_support import empty_node_uri, libvirt_module


def _names(capabilities: Capabilities) -> set[str]:
    return {a.name for a in DEFAULT_LIFECYCLE.actions if not supported(a, capabilities)}


def test_actions_needing_an_undeclared_capability_are_left_out() -> None:
    """With libvirt's declared capabilities, exactly the actions needing a snapshot, a rescue
    image or a second host are left out; with everything declared, nothing is."""
    libvirt_like = Capabilities(
        live_migration=False,
        snapshot=False,
        rescue=False,
        crash_dump=True,
        suspended_power_state=PowerState.SHUTDOWN,
    )
    assert _names(libvirt_like) == {
        "snapshot",
        "shelve",
        "rescue",
        "unrescue",
        "live_migrate",
        "live_migrate_abort",
        "live_migrate_force_complete",
    }
    assert _names(Capabilities()) == set()


@pytest.mark.libvirt
def test_simulate_runs_the_fleet_on_the_test_hypervisor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fleet runs on libvirt's test hypervisor, leaves nothing transient, and never tries
    what the driver cannot do."""
    libvirt_module()
    uri = empty_node_uri(tmp_path)
    argv = ["simulate", "--driver", "libvirt", "--uri", uri, "--instances", "12", "--quiet"]
    assert main([*argv, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "ism simulate: 12 instances on 1 hosts" in out
    assert "instances left in a transient state: 0" in out
    rows = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"create", "stop", "reboot", "force_delete"} <= rows
    assert not rows & {"rescue", "live_migrate", "evacuate"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "--driver", "libvirt"], "--driver libvirt needs --uri"),
        (["simulate", "--uri", "test:///default"], "--uri needs --driver libvirt"),
        (["simulate", "--driver", "libvirt", "--uri", "xen:///system"], "URI scheme 'xen'"),
    ],
)
def test_bad_driver_arguments_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or unusable URI exits 1 with one line on stderr."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
