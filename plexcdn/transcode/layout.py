"""Where things live on a transcode slave: what the origin may never share over it, and the plex account's home."""

from __future__ import annotations

from typing import Final

# Directories a slave needs for itself: sharing the origin's copy over them would break the slave.
SYSTEM_DIRS: Final = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/opt/plexcdn",
    "/var/lib/plexcdn-transcode",
)
# The plex account's home on a slave: its .ssh/authorized_keys is where the origin's key may run the guard.
PLEX_HOME: Final = "/var/lib/plexmediaserver"
