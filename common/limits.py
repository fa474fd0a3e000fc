"""Process limits a city needs: a thousand devices are a thousand sockets."""

from __future__ import annotations

import resource


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard limit (no root needed); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
