"""Failpoints: named places where a test can make a real process die or fail.

Set ``STOCKKEEPER_FAILPOINTS=dispatcher.after_publish=kill`` (comma-separated) to have
the process SIGKILL itself when it reaches that point, ``=raise`` to raise there, or
``=delay:MS`` to wait MS milliseconds there (points reached with ``await pause``);
``=kill@3`` acts on the third time the point is reached.
Crash tests use them to reach an exact moment without sleeping. Empty in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping

ENV = "STOCKKEEPER_FAILPOINTS"
ACTIONS = ("kill", "raise", "delay")


class FailpointError(RuntimeError):
    pass


class Failpoints:
    def __init__(self, points: Mapping[str, str] | None = None) -> None:
        self.points = dict(points or {})
        self.hits: dict[str, int] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Failpoints:
        raw = (os.environ if environ is None else environ).get(ENV, "")
        points: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in raw.split(","))):
            name, _, spec = item.partition("=")
            action, _, nth = (spec or "kill").partition("@")
            action, _, ms = action.partition(":")
            if (
                action not in ACTIONS
                or (nth and not nth.isdigit())
                or (action == "delay") != ms.isdigit()
            ):
                raise ValueError(
                    f"{ENV}: {item!r}: action must be kill, raise or delay:MS, then [@N]"
                )
            points[name] = spec or "kill"
        return cls(points)

    def _due(self, name: str) -> str | None:
        """The action of ``name`` if it acts on this hit."""
        spec = self.points.get(name)
        if spec is None:
            return None
        action, _, nth = spec.partition("@")
        self.hits[name] = self.hits.get(name, 0) + 1
        if nth and self.hits[name] != int(nth):
            return None
        return action

    async def pause(self, name: str) -> None:
        """Like ``hit``, for a point in async code that may also ``delay:MS`` there."""
        action = self._due(name)
        if action is not None and action.startswith("delay:"):
            await asyncio.sleep(int(action.partition(":")[2]) / 1000)
        elif action is not None:
            self._act(action, name)

    def hit(self, name: str) -> None:
        action = self._due(name)
        if action is not None:
            self._act(action, name)

    @staticmethod
    def _act(action: str, name: str) -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "raise":
            raise FailpointError(f"failpoint {name}")
