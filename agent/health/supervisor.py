"""The supervisor: stage heartbeats, the systemd watchdog, and periodic health work.

It pings `WATCHDOG=1` only while every essential stage has beaten recently, so a
wedged inference stage (a hung backend call, a deadlock) stops the pings and systemd
restarts the process. Periodic jobs (drift checks, resource guard, status line) run
on the same thread, each isolated so one failing job cannot stop the pings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.health.sdnotify import Notifier
from agent.metrics import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval_s: float
    run: Callable[[], None]


class Supervisor(threading.Thread):
    def __init__(
        self,
        *,
        notifier: Notifier,
        stop: threading.Event,
        heartbeats: Callable[[], Mapping[str, float]],
        status: Callable[[], str],
        stage_timeout_s: float = 30.0,
        watchdog_interval_s: float = 5.0,
        tick_s: float = 0.5,
        jobs: list[PeriodicJob] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="supervisor", daemon=True)
        self._notifier = notifier
        self._stop_event = stop
        self._heartbeats = heartbeats
        self._status = status
        self._stage_timeout_s = stage_timeout_s
        self._watchdog_interval_s = watchdog_interval_s
        self._tick_s = min(tick_s, watchdog_interval_s / 2)
        self._jobs = jobs or []
        self._clock = clock
        self._limiter = RateLimitedLog(30.0)
        self.wedged: list[str] = []
        self.watchdog_pings = 0

    def stale_stages(self, now: float) -> list[str]:
        return sorted(n for n, t in self._heartbeats().items() if now - t > self._stage_timeout_s)

    def run(self) -> None:
        last_ping = float("-inf")
        last_status = float("-inf")
        last_job = {job.name: self._clock() for job in self._jobs}
        while not self._stop_event.wait(self._tick_s):
            now = self._clock()
            self.wedged = self.stale_stages(now)
            if self.wedged:
                if self._limiter.allow("wedged", now) is not None:
                    log.error("stage wedged: withholding watchdog stages=%s", ",".join(self.wedged))
            elif now - last_ping >= self._watchdog_interval_s:
                if self._notifier.watchdog():
                    self.watchdog_pings += 1
                last_ping = now
            for job in self._jobs:
                if now - last_job[job.name] >= job.interval_s:
                    last_job[job.name] = now
                    self._run_job(job, now)
            if now - last_status >= 5.0:
                last_status = now
                self._notifier.status(self._status())

    def _run_job(self, job: PeriodicJob, now: float) -> None:
        try:
            job.run()
        except Exception:
            if self._limiter.allow(job.name, now) is not None:
                log.exception("periodic job failed job=%s", job.name)
