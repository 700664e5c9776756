"""The boot lab's example stack, booted once per session for every test module that uses it.

Booting the example stack's POPs takes most of ten minutes under TCG, so tests/lab/test_boot_pops.py
(first boot) and tests/lab/test_boot_pops_lifecycle.py (what follows it) share one set of guests: the
`pops` fixture. The lab is closed as soon as no test left to run uses it, so the other lab modules
do not share the machine's two cores with idle guests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from labs import boot_lab
from labs import guest_environment as env
from labs.boot_lab import BootLab, LabStack
from labs.remote_steps import StepError
from plexcdn.config import load_stack_file
from tests.lab.example_stack import EXAMPLE_STACK, PREFIX, Pops, unreachable_acme_config

# The session lab's resources while it is open (one slot, so the teardown hook can close it early).
_open_lab: list[contextlib.ExitStack] = []


@pytest.fixture(scope="session")
def pops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pops]:
    state_dir = tmp_path_factory.mktemp("boot-pops") / "state"
    config = load_stack_file(EXAMPLE_STACK)
    with contextlib.ExitStack() as resources:
        _open_lab.append(resources)
        lab = resources.enter_context(BootLab(state_dir, PREFIX))
        assert lab.moto is not None
        lab.zone_id = lab.moto.create_zone(config.domain)
        origin = lab.start_origin([config.origin.host], config.origin.port, media_mb=64)
        # The origin's name does not resolve while the hub deploys (a dynamic-DNS name not yet updated).
        lab.remove_record(config.origin.host)
        lab.remove_record("acme-v02.api.letsencrypt.org")
        stack = LabStack(lab, config, first_index=0)
        plan = stack.plan()
        failing_plan = boot_lab.stack_plan(lab, unreachable_acme_config(), first_index=len(plan.vms))
        deployment, failed = boot_lab.deploy_all(lab, [plan, failing_plan])
        if isinstance(deployment, StepError):
            lab.collect_logs()
            pytest.fail(f"the example stack's deploy failed: {deployment} (logs: {lab.logs_dir})")
        assert isinstance(failed, StepError), "the stack whose ACME server is unreachable deployed"
        stack.deployment = deployment
        # Viewers are sent to the edge (the lab has no geography to choose by).
        lab.set_record(config.shared_name, "A", [lab.guest("asia").address])
        shared = Pops(lab, stack, plan, failed, origin, {})
        shared.served_before_origin_resolved = shared.view("get", "/identity")
        lab.set_record(config.origin.host, "A", [str(env.ORIGIN_ADDRESS)])

        @resources.callback
        def keep_logs() -> None:
            # Kept after the lab is gone: the guests' logs and each step's time.
            kept = lab.collect_logs(tmp_path_factory.mktemp("boot-pops-logs"))
            (kept / "steps.log").write_text(lab.steps_log.read_text() if lab.steps_log.exists() else "")

        yield shared
    _open_lab.clear()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Close the example stack's lab once the next test (if any) does not use it."""
    if _open_lab and (nextitem is None or "pops" not in getattr(nextitem, "fixturenames", ())):
        _open_lab.pop().close()
