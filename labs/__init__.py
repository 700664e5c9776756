"""plex-cdn's labs and benchmarks: the rendered configs run for real in network namespaces and guests.

Nothing in the product (plexcdn/, components/, __main__.py) imports this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import jinja2

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
LAB_TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(LAB_TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701 - config files, not HTML
)


def render_lab_template(name: str, **context: object) -> str:
    return _environment.get_template(name).render(**context)
