"""Request coalescing (group commit) for reservations.

Concurrent ``POST /inventory/reserve`` requests that arrive within
``concurrency.coalesce_window_ms`` of the first one, up to
``concurrency.coalesce_max_batch``, are applied together by
``BatchReserver.reserve_batch`` (services/reserve_batch.py): one transaction, a constant
number of set-based statements and one commit per batch, each request still all or
none on its own and answered on its own (201, 200 repeat, 409 with its shortages, 422).

Fairness: requests are applied in the order they reached the coalescer, so with one
unit left the earliest request of a batch gets it; batches run one after another, so
the order holds across batches too.

The coalescer is a per-process optimisation, never a correctness device: stock is
guarded by the row locks and the guarded write of the batch, so other processes (and
requests that bypass it, such as ones with an Idempotency-Key) race correctly with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from stockkeeper.domain.errors import DomainError
from stockkeeper.failpoints import Failpoints
from stockkeeper.services.reservations import Reservations, ReservationView, ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver


@dataclass(slots=True)
class _Waiting:
    req: ReserveRequest
    answer: asyncio.Future[ReservationView] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ReserveCoalescer:
    """Gathers concurrent reservations into batches applied in one transaction each."""

    def __init__(
        self,
        reservations: Reservations,
        *,
        window_ms: float = 2.0,
        max_batch: int = 64,
        max_in_flight: int = 1,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.reservations = reservations
        self.batch = BatchReserver(reservations)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._running: set[asyncio.Task[None]] = set()
        self.failpoints = Failpoints() if failpoints is None else failpoints
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # batches applied, for tests and the bench

    async def reserve(self, req: ReserveRequest) -> ReservationView:
        """Hold stock for the order within the next batch; raise its own domain error."""
        waiting = _Waiting(req)
        self._queue.append(waiting)
        if len(self._queue) >= self.max_batch:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return await waiting.answer

    async def _flush_loop(self) -> None:
        # At most ``max_in_flight`` batches at once (each on its own connection); while
        # they commit, the next one gathers. Ends when nothing is waiting, so an idle
        # process holds no task.
        while self._queue:
            await self._slots.acquire()
            if len(self._queue) < self.max_batch and self.window_s > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.window_s)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            await self._apply(batch)
        finally:
            self._slots.release()

    async def _apply(self, batch: list[_Waiting]) -> None:
        self.batches += 1
        try:
            results = await self.batch.reserve_batch(
                [w.req for w in batch],
                after_each=lambda: self.failpoints.hit("reserve.coalesced_request"),
            )
        except BaseException as exc:
            # The batch's transaction failed as a whole (database gone, cancelled):
            # nothing of it committed, every request learns the same error.
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for w, result in zip(batch, results, strict=True):
            if w.answer.done():  # the client went away
                continue
            if isinstance(result, DomainError):
                w.answer.set_exception(result)
            else:
                w.answer.set_result(result)
