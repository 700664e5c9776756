"""The POP tree: who relays to whom, which POPs are hubs, and in what order requests travel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from plexcdn.config import ORIGIN, PopConfig, StackConfig


@dataclass(frozen=True)
class PopPlace:
    pop: PopConfig
    role: Literal["hub", "edge"]
    path_to_origin: tuple[str, ...]  # this POP's name, then each upstream POP's, ending before the origin
    downstream: tuple[str, ...]  # POPs whose upstream is this one: they connect on the peer port

    @property
    def hops(self) -> int:
        return len(self.path_to_origin)


def place(config: StackConfig, name: str) -> PopPlace:
    pop = config.pop(name)
    path = [pop.name]
    current = pop.upstream
    while current != ORIGIN:
        path.append(current)
        current = config.pop(current).upstream
    downstream = tuple(p.name for p in config.pops if p.upstream == name)
    return PopPlace(pop, "hub" if pop.upstream == ORIGIN else "edge", tuple(path), downstream)


def places(config: StackConfig) -> tuple[PopPlace, ...]:
    """Every POP's place, hubs first, then by distance from the origin, so upstreams precede their downstreams."""
    return tuple(sorted((place(config, pop.name) for pop in config.pops), key=lambda p: (p.hops, p.pop.name)))


def hubs(config: StackConfig) -> tuple[PopConfig, ...]:
    return tuple(pop for pop in config.pops if pop.upstream == ORIGIN)
