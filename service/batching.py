"""Opportunistic batching: requests that arrive while the model is busy are scored together in
its next call. A lone request never waits for company, so single-client latency stays low, while
32 concurrent single-row clients share one model call instead of queueing 32 of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Runs ``score(matrix) -> list of per-row results`` in ``executor`` on stacked matrices of
    waiting callers."""

    def __init__(
        self, score: Callable[[np.ndarray], list[T]], max_rows: int, executor: Executor
    ) -> None:
        self._score = score
        self._max_rows = max_rows
        self._executor = executor
        self._waiting: list[tuple[np.ndarray, asyncio.Future[list[T]]]] = []
        self._running = False

    async def __call__(self, matrix: np.ndarray) -> list[T]:
        """Results for the rows of ``matrix``, in order."""
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        self._waiting.append((matrix, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[list[T]]]]:
        taken: list[tuple[np.ndarray, asyncio.Future[list[T]]]] = []
        rows = 0
        while self._waiting and (not taken or rows + len(self._waiting[0][0]) <= self._max_rows):
            item = self._waiting.pop(0)
            taken.append(item)
            rows += len(item[0])
        return taken

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                stacked = np.vstack([matrix for matrix, _ in batch])
                try:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._score, stacked
                    )
                except Exception as exc:  # handed to every caller of this batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for matrix, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(matrix)])
                    start += len(matrix)
        finally:
            self._running = False
