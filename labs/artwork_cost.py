"""What private artwork not being cached costs a viewer: the relay lab over the WAN benchmark's emulated links
(viewer to edge 10 ms, edge to hub 180 ms, hub to Plex 30 ms), timing artwork fetches one by one.

    sudo .venv/bin/python -m labs.artwork_cost [--count N]

Prints one JSON object: for public artwork (cached on the edge after the first fetch) and for the server's
own library artwork (passed to Plex every time), each fetch's seconds and the median, on a new TLS
connection each, as a browser opening a page of posters would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from labs import PROJECT_ROOT, wan_bench
from labs import relay_lab as relay
from labs import wan_emulator as wan
from labs.netns import Lab
from plexcdn.config import load_stack_file

PREFIX = "pcx-"
TOKEN = "artwork-cost-token"  # noqa: S105 - the lab's stand-in accepts any token


def _fetch(built: relay.RelayLab, path: str) -> dict[str, Any]:
    url = built.config.shared_url + path
    argv = [sys.executable, "-m", "labs.viewer", "get", url, "--ca", str(built.ca.bundle_path)]
    result = built.lab.run("client", [*argv, "--header", f"X-Plex-Token:{TOKEN}"], cwd=str(PROJECT_ROOT))
    reply: dict[str, Any] = json.loads(result.stdout)
    return {
        "status": reply["status"],
        "cache": reply["headers"].get("X-PlexCDN-Cache"),
        "seconds": round(reply["seconds"], 4),
    }


def measure(count: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="plexcdn-artwork-"))
    root.chmod(0o755)
    try:
        with Lab(PREFIX) as lab:

            def wan_link(lab: Lab, a_role: str, b_role: str, subnet: str) -> tuple[str, str]:
                link = wan.connect(lab, a_role, b_role, subnet, wan_bench.hop_profile(a_role, b_role), seed=1)
                return str(link.a_addr), str(link.b_addr)

            built = relay.build(load_stack_file(wan_bench.DEFAULT_STACK), root, lab, media_mb=1, link=wan_link)
            public = "/photo/:/transcode?width=300&url=https%3A%2F%2Fimage.tmdb.org%2Ft%2Fp%2Fw300%2Fposter.jpg"
            private = "/photo/:/transcode?width=300&url=%2Flibrary%2Fmetadata%2F7%2Fthumb%2F1700000000"
            fetches = {
                "public (cached)": [_fetch(built, public) for _ in range(count)],
                "library (not cached)": [_fetch(built, private) for _ in range(count)],
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    links = {"viewer-edge": wan_bench.VIEWER_HOP, "edge-hub": wan_bench.BACKBONE_HOP, "hub-plex": wan_bench.ORIGIN_HOP}
    return {
        "links_rtt_ms": {name: profile.rtt_ms for name, profile in links.items()},
        "artwork": {
            kind: {
                "median_s": statistics.median(f["seconds"] for f in runs[1:]),
                "first_s": runs[0]["seconds"],
                "fetches": runs,
            }
            for kind, runs in fetches.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.artwork_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10)
    arguments = parser.parse_args(argv)
    print(json.dumps(measure(max(2, min(arguments.count, 100))), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
