"""Dynamic batching for the HTTP server: requests that arrive together share one forward pass.

Two stages, so that a bad request never joins (and never delays) a batch:

1. **Check, per request** (the codec's ``check``, :class:`mldcn.serve.inputs.Codec`): every rule of
   :mod:`mldcn.serve.inputs` that a record can break on its own — a missing
   field, a wrong type, an infinity, an id out of range — is checked before the
   request is queued; a bad request gets its 422 at once.
2. **Encode and score, per batch** (the codec's ``encode``, then the
   model): the checked requests of one batch are encoded in one call (the raw
   preprocessing runs Arrow kernels whose cost is mostly per call: ~0.5 ms for
   one row, ~0.6 ms for 32 rows of Frappe) and scored in one forward pass. The
   two checks that need the encoded or scored values — a number that the
   schema's transform takes past float32, and a probability that the model's
   float32 arithmetic makes NaN — are per row, so they refuse only the request
   that holds the row; its neighbours in the batch get their answers.

Encoding and the model are row-wise (no statistic is taken over a batch, the
model is in eval mode), so a request's probabilities are the ones it gets
alone, up to float32 rounding: a GEMM may sum in another order for another
batch size (≤ 1e-6 here, the tolerance the serving tests use).

:class:`Batcher` is the queue: the first request of a batch opens a window of
``wait_s`` seconds; the batch is scored when the window closes or it holds
``max_rows`` rows, and a runner (one of ``runners`` threads) is free. While
every runner is busy, the waiting batch goes on filling up to ``max_rows``, so
batches grow with the load. ``wait_s = 0`` turns batching off: each request is
scored alone, as without a batcher.

Shape legend as in :mod:`mldcn.features`: ``[B, ...]`` rows, ``T`` tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger("mldcn.serve")

Part = TypeVar("Part")
Result = TypeVar("Result")


# ---------------------------------------------------------------------------- the queue


class BatchFailed(RuntimeError):
    """The scoring function of a batch raised (a bug): every request of the batch gets this."""


@dataclass
class _Waiting(Generic[Part]):
    part: Part
    rows: int
    future: asyncio.Future
    arrival: float  # event-loop time


class Batcher(Generic[Part, Result]):
    """Gathers requests that arrive within ``wait_s`` and scores them together in a worker thread.

    Runs on one asyncio event loop (the server's); only ``score`` runs in the
    ``runners`` threads. ``score(parts)`` returns one result per part, in
    order: a value, or an exception that the part's :meth:`submit` raises.

    Args:
        score: checked requests → their results; should not raise (if it does,
            the batch's requests get :class:`BatchFailed` and the batcher goes on).
        wait_s: how long the first request of a batch waits for others (0: no batching).
        max_rows: a batch is scored as soon as it holds this many rows; a
            request with more rows is scored alone.
        runners: batches scored at the same time (threads).
        observe: called on the event loop with (requests, rows) of every batch scored.
    """

    def __init__(
        self,
        score: Callable[[list[Part]], list[Result | Exception]],
        wait_s: float,
        max_rows: int,
        runners: int,
        observe: Callable[[int, int], None] | None = None,
    ) -> None:
        if wait_s < 0 or max_rows < 1 or runners < 1:
            raise ValueError(f"need wait_s >= 0, max_rows >= 1, runners >= 1; got {wait_s}, {max_rows}, {runners}")
        self.score = score
        self.wait_s = wait_s
        self.max_rows = max_rows
        self.runners = runners
        self.observe = observe
        self._executor = ThreadPoolExecutor(runners, thread_name_prefix="mldcn-batch")
        self._pending: deque[_Waiting] = deque()
        self._pending_rows = 0
        self._busy = 0
        self._running: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, part: Part, rows: int) -> Result:
        """Queue a checked request of ``rows`` rows; its result once its batch is scored."""
        loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Waiting(part, rows, future, loop.time()))
        self._pending_rows += rows
        self._dispatch()
        return await future  # a cancelled request cancels its future; the batcher skips it

    def _dispatch(self) -> None:
        """Start every batch that is due while a runner is free."""
        loop = self._loop
        while self._pending and self._busy < self.runners:
            head = self._pending[0]
            if head.future.done():  # its request was cancelled while it waited
                self._pop()
                continue
            if self.wait_s > 0 and self._pending_rows < self.max_rows:
                delay = head.arrival + self.wait_s - loop.time()
                if delay > 0:  # the window is open: come back when it closes
                    if self._timer is None:
                        self._timer = loop.call_later(delay, self._window_closed)
                    return
            batch = [self._pop()]
            rows = batch[0].rows
            while self.wait_s > 0 and self._pending and rows + self._pending[0].rows <= self.max_rows:
                waiting = self._pop()
                if not waiting.future.done():
                    batch.append(waiting)
                    rows += waiting.rows
            self._busy += 1
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _pop(self) -> _Waiting:
        waiting = self._pending.popleft()
        self._pending_rows -= waiting.rows
        return waiting

    def _window_closed(self) -> None:
        self._timer = None
        self._dispatch()

    async def _run(self, batch: list[_Waiting]) -> None:
        results: list | None = None
        try:
            results = await self._loop.run_in_executor(self._executor, self._score, [w.part for w in batch])
            if self.observe is not None:
                self.observe(len(batch), sum(w.rows for w in batch))
        finally:
            self._busy -= 1
            for i, waiting in enumerate(batch):
                if waiting.future.done():
                    continue
                if results is None:  # cancelled at shutdown before the thread answered
                    waiting.future.cancel()
                elif isinstance(results[i], BaseException):
                    waiting.future.set_exception(results[i])
                else:
                    waiting.future.set_result(results[i])
            self._dispatch()

    def _score(self, parts: list[Part]) -> list:
        """``score`` in a runner thread, never raising: a failure becomes every part's :class:`BatchFailed`."""
        try:
            results = self.score(parts)
            if len(results) != len(parts):
                raise RuntimeError(f"{len(results)} results for {len(parts)} requests")
            return list(results)
        except Exception as error:
            logger.exception("a batch of %d requests failed", len(parts))
            return [BatchFailed(f"{type(error).__name__}: {error}") for _ in parts]

    async def close(self) -> None:
        """Wait until every queued request has been answered, then stop the runner threads."""
        while self._pending or self._running:
            if self._running:
                await asyncio.wait(set(self._running))
            else:  # queued, the window still open
                await asyncio.sleep(min(self.wait_s, 0.01) or 0.001)
        self._executor.shutdown(wait=True)
