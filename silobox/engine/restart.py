"""Docker's restart policies (``--restart no|on-failure[:N]|always|unless-stopped``) as rules.

The container service asks these after an exit nobody asked for, and when silod starts; the
answers depend only on the record, so they are tested apart from any process.
"""

from __future__ import annotations

from typing import Any

FIRST_BACKOFF = 0.1   # seconds before the first restart, doubled at each one in a row
MAX_BACKOFF = 60.0
RESET_AFTER = 10.0    # a run this long starts the back-off again from the first delay


def _policy(c: Any) -> tuple[str, int]:
    rp = c.host_config.get("RestartPolicy") or {}
    return rp.get("Name") or "no", rp.get("MaximumRetryCount") or 0


def restart_after_exit(c: Any, exit_code: int) -> bool:
    """Whether the policy restarts the container after it exited with ``exit_code``."""
    name, limit = _policy(c)
    if name == "no" or c.stopped_by_user:
        return False
    if name == "on-failure":
        return exit_code != 0 and (limit == 0 or c.restart_count < limit)
    return name in ("always", "unless-stopped")


def start_with_daemon(c: Any) -> bool:
    """Whether silod starts the (stopped) container when it starts, as dockerd does."""
    name, _ = _policy(c)
    return name == "always" or (name == "unless-stopped" and not c.stopped_by_user)


def next_backoff(previous: float | None, ran_for: float) -> float:
    """The wait before the next restart: 100 ms doubling, reset after 10 s of running."""
    if previous is None or ran_for > RESET_AFTER:
        return FIRST_BACKOFF
    return min(previous * 2, MAX_BACKOFF)
