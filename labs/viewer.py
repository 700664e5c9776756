"""A viewer for the relay lab, run inside the client namespace: what a Plex client does, measured.

    python -m labs.viewer get URL --ca CA [--range A-B] [--header K:V] [--sha256]
    python -m labs.viewer sequence URL --ca CA --count N      # N requests on one connection
    python -m labs.viewer websocket URL --ca CA --idle SECONDS
    python -m labs.viewer pause URL --ca CA --read BYTES --seconds S   # a player that stops reading

Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import ssl
import time
import urllib.parse
from typing import Any

import aiohttp

CHUNK = 1 << 20


def _connection(url: str, ca: str) -> tuple[http.client.HTTPSConnection, str]:
    parsed = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca)
    connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port or 443, context=context, timeout=60)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return connection, path


def get(url: str, ca: str, headers: dict[str, str], want_hash: bool) -> dict[str, Any]:
    connection, path = _connection(url, ca)
    started = time.monotonic()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    first_byte = time.monotonic() - started
    digest = hashlib.sha256()
    size = 0
    body = b""
    while chunk := response.read(CHUNK):
        size += len(chunk)
        digest.update(chunk)
        if not want_hash and len(body) < CHUNK:
            body += chunk
    connection.close()
    result: dict[str, Any] = {
        "status": response.status,
        "headers": dict(response.getheaders()),
        "size": size,
        "ttfb_s": first_byte,
        "seconds": time.monotonic() - started,
    }
    result["sha256" if want_hash else "body_hex"] = digest.hexdigest() if want_hash else body.hex()
    return result


def sequence(url: str, ca: str, count: int, headers: dict[str, str]) -> dict[str, Any]:
    connection, path = _connection(url, ca)
    statuses = []
    for _ in range(count):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()
    return {"statuses": statuses}


def pause(url: str, ca: str, headers: dict[str, str], read_bytes: int, seconds: float) -> dict[str, Any]:
    """Read the start of a response, then hold the connection open without reading, as a paused player does."""
    connection, path = _connection(url, ca)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    received = len(response.read(read_bytes))
    time.sleep(seconds)
    connection.close()
    return {"status": response.status, "received": received}


async def websocket(url: str, ca: str, idle_s: float) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca)
    received: list[str] = []
    timeout = aiohttp.ClientWSTimeout(ws_receive=idle_s + 30)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=context, heartbeat=None, autoping=True, timeout=timeout) as socket,
    ):
        received.append(await socket.receive_str())
        await socket.send_str("before idle")
        received.append(await socket.receive_str())
        await asyncio.sleep(idle_s)
        await socket.send_str("after idle")
        received.append(await socket.receive_str())
        return {"received": received, "closed": socket.closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("get", "sequence", "websocket", "pause"):
        command = commands.add_parser(name)
        command.add_argument("url")
        command.add_argument("--ca", required=True)
        command.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    commands.choices["get"].add_argument("--range")
    commands.choices["get"].add_argument("--sha256", action="store_true")
    commands.choices["sequence"].add_argument("--count", type=int, default=10)
    commands.choices["websocket"].add_argument("--idle", type=float, default=0)
    commands.choices["pause"].add_argument("--read", type=int, default=CHUNK)
    commands.choices["pause"].add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    if args.command == "get":
        if args.range:
            headers["Range"] = f"bytes={args.range}"
        result = get(args.url, args.ca, headers, args.sha256)
    elif args.command == "pause":
        result = pause(args.url, args.ca, headers, args.read, min(args.seconds, 120))
    elif args.command == "sequence":
        result = sequence(args.url, args.ca, min(args.count, 1000), headers)
    else:
        result = asyncio.run(websocket(args.url, args.ca, min(args.idle, 600)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
