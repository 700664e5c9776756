"""The example stack (Pulumi.dev.yaml) on real Debian 13 guests, shared by the boot lab's POP tests.

tests/lab/conftest.py boots it once per session (the `pops` fixture): the whole graph runs under
labs.stack_engine (real keys, certificates and IAM keys), so each guest boots the exact user_data the
program hands the provider and takes the exact steps it hands pulumi-command. A third guest, of a
one-POP stack whose ACME server cannot be reached, boots beside them. The Plex origin's name does not
resolve when the hub deploys; it is added to the lab DNS afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.boot_lab import BootLab, LabPlan, LabStack
from labs.guests import Guest
from labs.remote_steps import StepError
from plexcdn import render
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STACK = ROOT / "Pulumi.dev.yaml"
PREFIX = "pcvp-"
# The hub of a stack whose certificates come from Let's Encrypt's production directory, which this lab
# does not answer: its first boot must fail, and its deploy must say where.
UNREACHABLE_ACME_STACK = "acmefail"


def unreachable_acme_config() -> StackConfig:
    values = example_values()
    values["acme"]["server"] = "production"
    values["sharedHostname"] = "fail"
    values["pops"] = [
        {"name": "solo", "provider": "digitalocean", "region": "sfo3", "size": "s-1vcpu-1gb", "upstream": "origin"}
    ]
    return config_from(values, UNREACHABLE_ACME_STACK)


@dataclass
class Pops:
    lab: BootLab
    stack: LabStack  # the example stack: `stack.up(config)` is a `pulumi up` of it with a changed config
    plan: LabPlan  # its first `pulumi up`
    failed: StepError
    origin: dict[str, str]
    served_before_origin_resolved: dict[str, Any]

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    def guest(self, pop: str) -> Guest:
        return self.lab.guest(pop)

    def on(self, pop: str, command: str, timeout: float = 300, stdin: str | None = None) -> str:
        result = self.lab.run(self.guest(pop), command, stdin=stdin, timeout=timeout)
        assert result.returncode == 0, f"{pop}: {command} exited {result.returncode}: {result.stdout} {result.stderr}"
        return str(result.stdout)

    def viewer_argv(self, command: str, path: str, *options: str) -> list[str]:
        """labs/viewer.py in the viewer namespace, trusting Pebble's root as a viewer trusts Let's Encrypt's."""
        assert self.lab.pebble is not None
        scheme = "wss" if command == "websocket" else "https"
        url = f"{scheme}://{self.config.shared_name}{path}"
        argv = [sys.executable, "-m", "labs.viewer", command, url, "--ca", str(self.lab.pebble.root_file), *options]
        return ["ip", "netns", "exec", self.lab.viewer_namespace, *argv]

    def view(self, command: str, path: str, *options: str, timeout: float = 300) -> dict[str, Any]:
        result = subprocess.run(
            self.viewer_argv(command, path, *options),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def headers_seen(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.origin["headers_log"]).read_text().splitlines()]

    def release(self, pop: str) -> str:
        """The release nginx on the POP serves, as the deploy checks it."""
        return self.on(pop, f"curl -fsS --max-time 5 http://127.0.0.1{render.RELEASE_PATH}").strip()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout} s")
