#!/usr/bin/env python3
"""plexcdn-upstream-watch: move an edge's requests to its fallback POP as soon as its upstream POP goes silent.

    plexcdn-upstream-watch --upstream ADDRESS --port PORT --nginx-user USER

The edge's nginx already moves to the fallback (a `backup` server) when a connection to the upstream fails,
which is immediate when the upstream's nginx is gone: its kernel refuses. A POP that died with its VM, or
whose network drops everything, refuses nothing: new connections wait for their timeout, and requests on
the kept-alive connections wait for an answer that never comes, for as long as a paused stream may last.

So this program asks the upstream's peer port for a TCP handshake every INTERVAL seconds. After MISSES
unanswered ones in a row it closes the upstream's road to nginx alone (a routing rule that makes ADDRESS
unreachable for nginx's user, so nginx fails over at once instead of waiting for a timeout) and
aborts nginx's open connections there (`ss -K`): a request still waiting for its answer is retried on the
fallback by nginx, and a viewer whose response was cut asks again with a range, which Plex clients do.
After ANSWERS answered handshakes in a row the rule goes, and nginx returns to the upstream on its own.
Standard library only: this file is copied to the POP and run by systemd.
"""

from __future__ import annotations

import argparse
import ipaddress
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 0.5
MISSES = 2
ANSWERS = 6
# Looked up after first boot's rule for the metadata address (priority 100), before the main table (32766).
RULE_PRIORITY = 1000


def probe(address: str, port: int, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when the upstream completes a TCP handshake within `timeout`."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _family(address: str) -> str:
    return "-6" if ipaddress.ip_address(address).version == 6 else "-4"


def _rule(action: str, address: str, uid: int) -> list[str]:
    rule = ["priority", str(RULE_PRIORITY), "to", address, "uidrange", f"{uid}-{uid}", "unreachable"]
    return ["ip", _family(address), "rule", action, *rule]


def block_commands(address: str, port: int, uid: int) -> list[list[str]]:
    """No route to the upstream for `uid` (nginx's workers), then abort nginx's connections there."""
    return [_rule("add", address, uid), ["ss", "-K", "dst", address, "dport", "=", f":{port}"]]


def unblock_commands(address: str, uid: int) -> list[list[str]]:
    return [_rule("del", address, uid)]


def run_commands(commands: Sequence[Sequence[str]]) -> None:
    for argv in commands:
        subprocess.run(list(argv), capture_output=True, check=False)


@dataclass
class Watch:
    """The decision alone: fed one probe result at a time, it says when to block and when to unblock."""

    misses: int = MISSES
    answers: int = ANSWERS
    blocked: bool = False
    _missed: int = 0
    _answered: int = 0

    def observe(self, answered: bool) -> str | None:
        """'block', 'unblock' or None after one probe."""
        if answered:
            self._missed, self._answered = 0, self._answered + 1
            if self.blocked and self._answered >= self.answers:
                self.blocked = False
                return "unblock"
        else:
            self._answered, self._missed = 0, self._missed + 1
            if not self.blocked and self._missed >= self.misses:
                self.blocked = True
                return "block"
        return None


def watch(
    address: str,
    port: int,
    uid: int,
    *,
    rounds: int | None = None,
    interval: float = INTERVAL_SECONDS,
    prober: Callable[[str, int], bool] = probe,
    runner: Callable[[Sequence[Sequence[str]]], None] = run_commands,
    say: Callable[[str], None] = print,
) -> Watch:
    """Probe until stopped (or `rounds` probes), blocking and unblocking the upstream as `Watch` decides."""
    state = Watch()
    # A rule left by an earlier run (killed before it could clean up) goes; the probes decide afresh.
    runner(unblock_commands(address, uid))
    done = 0
    while rounds is None or done < rounds:
        started = time.monotonic()
        decision = state.observe(prober(address, port))
        if decision == "block":
            runner(block_commands(address, port, uid))
            say(f"upstream {address}:{port} does not answer; requests go to the fallback POP")
        elif decision == "unblock":
            runner(unblock_commands(address, uid))
            say(f"upstream {address}:{port} answers again; requests return to it")
        done += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plexcdn-upstream-watch", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="the upstream POP's address")
    parser.add_argument("--port", required=True, type=int, help="its peer port")
    parser.add_argument("--nginx-user", required=True, help="the user nginx's workers run as")
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many probes (default: never)")
    args = parser.parse_args(argv)
    ipaddress.ip_address(args.upstream)
    uid = pwd.getpwnam(args.nginx_user).pw_uid

    def say(message: str) -> None:
        print(f"plexcdn-upstream-watch: {message}", flush=True)

    watch(args.upstream, args.port, uid, rounds=args.rounds, say=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
