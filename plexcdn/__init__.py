"""plex-cdn's pure logic: config model, topology, tables and rendering. It never imports pulumi."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
