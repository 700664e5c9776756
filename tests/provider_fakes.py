"""DigitalOcean's and Linode's APIs as far as the preflight reads them, served on 127.0.0.1 from the
documented response shapes in tests/fixtures/preflight (see its README for where each shape comes from).

The fake paginates as the providers do (DigitalOcean: `page`/`per_page` with `links.pages.next` and
`meta.total`; Linode: `page`/`page_size` with `page`, `pages`, `results`), refuses a wrong token with each
provider's 401 body, and records every request so tests can see what the clients asked.
"""

from __future__ import annotations

import copy
import json
import math
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "preflight"
DIGITALOCEAN_TOKEN = "dop_v1_preflight-test-token"
LINODE_TOKEN = "linode-preflight-test-token"

DIGITALOCEAN_LISTS = {
    "/v2/regions": "regions",
    "/v2/sizes": "sizes",
    "/v2/images": "images",
    "/v2/droplets": "droplets",
}
LINODE_LISTS = {
    "/v4/regions": "regions",
    "/v4/regions/availability": "regions_availability",
    "/v4/linode/types": "types",
    "/v4/linode/instances": "instances",
    "/v4/account/availability": "account_availability",
}
LINODE_ACCOUNT_PATHS = ("/v4/account/",)
MAX_PAGE_SIZE = 200  # DigitalOcean's per_page and Linode's page_size both stop at 200 or more


def _load(provider: str) -> dict[str, Any]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((FIXTURES / provider).glob("*.json"))}


@dataclass
class FakeProviders:
    """The two APIs' state: edit `digitalocean[...]` and `linode[...]` (the fixtures' bodies) before a run."""

    digitalocean: dict[str, Any] = field(default_factory=lambda: _load("digitalocean"))
    linode: dict[str, Any] = field(default_factory=lambda: _load("linode"))
    # Linode paths the token's scopes do not cover: answered 401 as Linode does.
    linode_denied: tuple[str, ...] = ()
    requests: list[tuple[str, str]] = field(default_factory=list)  # (provider, path with query)
    url: str = ""

    # --- editing helpers -----------------------------------------------------------------------------------

    def do_region(self, slug: str) -> dict[str, Any]:
        return next(r for r in self.digitalocean["regions"]["regions"] if r["slug"] == slug)

    def linode_region(self, region_id: str) -> dict[str, Any]:
        return next(r for r in self.linode["regions"]["data"] if r["id"] == region_id)

    def add_droplets(self, count: int, prefix: str = "worker") -> None:
        template = self.digitalocean["droplets"]["droplets"][0]
        for index in range(count):
            droplet = copy.deepcopy(template)
            droplet["id"] = 4_000_000 + index
            droplet["name"] = f"{prefix}-{index}"
            droplet["networks"]["v4"][1]["ip_address"] = f"192.0.2.{10 + index}"
            self.digitalocean["droplets"]["droplets"].append(droplet)

    def add_droplet(self, name: str, region: str, ipv4: str, ipv6: str) -> None:
        droplet = copy.deepcopy(self.digitalocean["droplets"]["droplets"][0])
        droplet.update(id=5_000_000 + len(self.digitalocean["droplets"]["droplets"]), name=name, tags=["plex-cdn"])
        droplet["region"] = copy.deepcopy(self.do_region(region))
        droplet["networks"] = {
            "v4": [{"ip_address": ipv4, "netmask": "255.255.255.0", "gateway": "192.0.2.1", "type": "public"}],
            "v6": [{"ip_address": ipv6, "netmask": 64, "gateway": "2001:db8::1", "type": "public"}],
        }
        self.digitalocean["droplets"]["droplets"].append(droplet)

    def add_linode(self, label: str, region: str, ipv4: str, ipv6: str) -> None:
        instance = copy.deepcopy(self.linode["instances"]["data"][0])
        instance.update(
            id=700 + len(self.linode["instances"]["data"]),
            label=label,
            region=region,
            ipv4=[ipv4],
            ipv6=f"{ipv6}/128",
            tags=["plex-cdn"],
        )
        self.linode["instances"]["data"].append(instance)

    # --- serving -------------------------------------------------------------------------------------------

    def answer(self, path: str, query: dict[str, list[str]], authorization: str) -> tuple[int, Any]:
        if path.startswith("/v2/"):
            if authorization != f"Bearer {DIGITALOCEAN_TOKEN}":
                return 401, {"id": "Unauthorized", "message": "Unable to authenticate you"}
            return self._digitalocean(path, query)
        if path.startswith("/v4/"):
            if authorization != f"Bearer {LINODE_TOKEN}":
                return 401, {"errors": [{"reason": "Invalid Token"}]}
            if any(path.startswith(denied) for denied in self.linode_denied):
                return 401, {"errors": [{"reason": "Your OAuth token is not authorized to use this endpoint."}]}
            return self._linode(path, query)
        return 404, {"errors": [{"reason": "Not found"}]}

    def _digitalocean(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/v2/account":
            return 200, self.digitalocean["account"]
        if path not in DIGITALOCEAN_LISTS:
            return 404, {"id": "not_found", "message": "The resource you were accessing could not be found."}
        key = DIGITALOCEAN_LISTS[path]
        items = self.digitalocean[key][key]
        if path == "/v2/droplets" and query.get("type") == ["gpus"]:
            items = []
        page = int(query.get("page", ["1"])[0])
        per_page = min(int(query.get("per_page", ["20"])[0]), MAX_PAGE_SIZE)
        chunk = items[(page - 1) * per_page : page * per_page]
        pages: dict[str, str] = {}
        last = max(1, math.ceil(len(items) / per_page))
        if page < last:
            pages["next"] = f"{self.url}{path}?page={page + 1}&per_page={per_page}"
            pages["last"] = f"{self.url}{path}?page={last}&per_page={per_page}"
        return 200, {key: chunk, "links": {"pages": pages}, "meta": {"total": len(items)}}

    def _linode(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path.startswith("/v4/images/"):
            image_id = path.removeprefix("/v4/images/")
            for image in self.linode["images"]["data"]:
                if image["id"] == image_id:
                    return 200, image
            return 404, {"errors": [{"reason": "Not found"}]}
        if path not in LINODE_LISTS:
            return 404, {"errors": [{"reason": "Not found"}]}
        items = self.linode[LINODE_LISTS[path]]["data"]
        page = int(query.get("page", ["1"])[0])
        page_size = min(int(query.get("page_size", ["100"])[0]), MAX_PAGE_SIZE)
        pages = max(1, math.ceil(len(items) / page_size))
        chunk = items[(page - 1) * page_size : page * page_size]
        return 200, {"data": chunk, "page": page, "pages": pages, "results": len(items)}


def _handler(fake: FakeProviders) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            provider = "digitalocean" if parts.path.startswith("/v2/") else "linode"
            fake.requests.append((provider, self.path))
            status, body = fake.answer(parts.path, parse_qs(parts.query), self.headers.get("Authorization", ""))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(fake: FakeProviders, tls: ssl.SSLContext) -> Iterator[FakeProviders]:
    """Run the fake over HTTPS on 127.0.0.1 while the generator is open; `fake.url` is its base URL.

    HTTPS because the clients send bearer tokens over nothing else (azure-core refuses plain http)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    fake.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
