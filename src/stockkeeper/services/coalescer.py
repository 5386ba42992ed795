"""Request coalescing (group commit) for reservations.

Concurrent ``POST /inventory/reserve`` requests that arrive within
``concurrency.coalesce_window_ms`` of the first one, up to
``concurrency.coalesce_max_batch``, are applied together by
``BatchReserver.reserve_batch`` (services/reserve_batch.py): one transaction, a constant
number of set-based statements and one commit per batch, each request still all or
none on its own and answered on its own (201, 200 repeat, 409 with its shortages, 422).

Fairness: requests are applied in the order they reached the coalescer, so with one
unit left the earliest request of a batch gets it. Up to ``max_in_flight`` batches run
at once, each on its own connection, chained in cut order (``Turn``, D-360): a batch
takes its order ids after the one cut before it has taken its own, and sends its
locking statement only after that one's has returned, so row locks are granted in cut
order and the order holds across batches too.

Cutting (D-361): with nothing in flight a batch gathers for the window, or until a
share of ``max_batch / max_in_flight`` requests waits; what waits is split among the
free slots, a share at least each, so requests that arrived together do not all wait
on one transaction. With batches in flight the next one is cut when a slot is free and
either the last batch cut holds its row locks or a share waits: on one hot SKU a batch
gathers while the one before it waits for the locks, and is ready to lock the moment
that one has them, while the server answers and PostgreSQL writes.

The coalescer is a per-process optimisation, never a correctness device: stock is
guarded by the row locks and the guarded write of the batch, so other processes (and
requests that bypass it, such as ones with an Idempotency-Key) race correctly with it.
First come, first served is therefore a promise within a process: between requests
that reached different processes, PostgreSQL grants the row locks in the order the
processes' batches ask for them (D-401).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass, field

from stockkeeper.domain.errors import DomainError
from stockkeeper.failpoints import Failpoints
from stockkeeper.services.reservations import Reservations, ReservationView, ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver, Turn


@dataclass(slots=True)
class _Waiting:
    req: ReserveRequest
    answer: asyncio.Future[ReservationView] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # The request's context (its trace, its log fields): a batch runs in its first
    # request's, not in that of whichever request started the flusher (D-406).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


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
        self.max_in_flight = max_in_flight
        self._running: set[asyncio.Task[None]] = set()
        self.failpoints = Failpoints() if failpoints is None else failpoints
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self._queue: list[_Waiting] = []
        # Set when a share of a batch is waiting or a batch in flight took its locks.
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._last: Turn | None = None  # of the last batch cut
        self._turns: list[Turn] = []  # of the batches in flight
        self.batches = 0  # batches applied, for tests and the bench

    async def reserve(self, req: ReserveRequest) -> ReservationView:
        """Hold stock for the order within the next batch; raise its own domain error."""
        waiting = _Waiting(req)
        self._queue.append(waiting)
        if len(self._queue) >= self._floor():
            self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return await waiting.answer

    async def _flush_loop(self) -> None:
        # At most ``max_in_flight`` batches at once (each on its own connection). Ends
        # when nothing is waiting, so an idle process holds no task.
        while self._queue:
            await self._slots.acquire()
            # While the last batch cut waits for its row locks, the next one gathers
            # until it has a share of its own (D-361).
            last = self._last
            while (
                last is not None and not last.locked.is_set() and len(self._queue) < self._floor()
            ):
                self._wake.clear()
                await self._wake.wait()
            if not self._turns and not self._full() and self.window_s > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.window_s)
            n = self._cut_size()
            batch, self._queue = self._queue[:n], self._queue[n:]
            previous = last if last is not None and not last.locked.is_set() else None
            turn = self._last = Turn(previous, on_locked=self._wake.set)
            self._turns.append(turn)
            task = asyncio.create_task(self._run(batch, turn), context=batch[0].context)
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _cut_size(self) -> int:
        """How many of the queue the next batch takes: what is waiting, shared among the
        free slots when that leaves each batch at least ``max_batch / max_in_flight``,
        so the requests that arrived together do not all wait on one transaction
        while the others' slots stay idle (D-361)."""
        waiting = len(self._queue)
        free = self.max_in_flight - len(self._turns)
        share = -(-waiting // free)
        return min(waiting, self.max_batch, max(share, self._floor()))

    def _floor(self) -> int:
        """A batch's share: the most requests a batch waits for while others are in
        flight, and the least it takes when the waiting requests are split."""
        return max(1, self.max_batch // self.max_in_flight)

    def waiting_for_turn(self) -> int:
        """Batches in flight waiting for the batch cut before them (tests)."""
        return sum(t.waiting for t in self._turns)

    def _full(self) -> bool:
        return len(self._queue) >= self.max_batch

    async def _run(self, batch: list[_Waiting], turn: Turn) -> None:
        try:
            await self._apply(batch, turn)
        finally:
            turn.release()
            self._turns.remove(turn)
            self._slots.release()

    async def _apply(self, batch: list[_Waiting], turn: Turn) -> None:
        self.batches += 1
        self.reservations.metrics.reserve_batch_size.observe(len(batch))
        try:
            results = await self.batch.reserve_batch(
                [w.req for w in batch],
                after_each=lambda: self.failpoints.hit("reserve.coalesced_request"),
                turn=turn,
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
