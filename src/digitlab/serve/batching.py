"""Micro-batching for single-image requests: what arrives while the model is busy goes in one call.

Usage (inside the app)::

    batcher = MicroBatcher(predictor, max_batch=64)
    prediction = await batcher.submit(ImageJob(data, top_k=3, min_confidence=None, polarity="auto"))

One batch runs at a time per worker, in the thread pool: it prepares each image (``Predictor.prepare``)
and classifies all of them in one ``predict_prepared`` call. Requests that arrive meanwhile wait in
the queue and form the next batch, so an idle server answers one request at once (no waiting for
a batch to fill) and a busy one pays one model call per batch instead of one per request, with no
pile-up of threads each running its own small model call.
"""

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from digitlab.inference import ImagePrediction, Predictor, Prepared
from digitlab.inference.prepare import Polarity


@dataclass
class ImageJob:
    """One request's image and options, and the future its answer goes to."""

    data: bytes
    top_k: int
    min_confidence: float | None
    polarity: Polarity
    box: tuple[int, int, int, int] | None = None  # a region of interest: x, y, width, height
    future: asyncio.Future[ImagePrediction] = field(init=False, repr=False)


class MicroBatcher:
    """Batches concurrent :class:`ImageJob` s into one model call at a time.

    Args:
        predictor: what prepares and classifies.
        max_batch: the most images in one call.
    """

    def __init__(self, predictor: Predictor, *, max_batch: int = 64) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: asyncio.Queue[ImageJob] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, job: ImageJob) -> ImagePrediction:
        """The prediction of ``job`` (raises its ImageError; cancelling the wait leaves the batch alone)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        job.future = loop.create_future()
        self._queue.put_nowait(job)
        return await job.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # timed out or cancelled while queued
            if not jobs:
                continue
            try:
                outcomes = await run_in_threadpool(self._work, jobs)
            except Exception as e:  # _work fails jobs alone: this is the last resort
                outcomes = [e] * len(jobs)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _work(self, jobs: list[ImageJob]) -> list[ImagePrediction | BaseException]:
        """Prepare each image, then one model call per distinct option set; a failure of any kind fails
        its own job alone (a model call that fails is retried image by image, so one bad input in a
        batch does not fail the others)."""
        outcomes: list[ImagePrediction | BaseException | None] = [None] * len(jobs)
        groups: dict[tuple[int, float | None], list[tuple[int, Prepared]]] = defaultdict(list)
        for i, job in enumerate(jobs):
            try:
                prepared = self.predictor.prepare(job.data, polarity=job.polarity, box=job.box)
            except Exception as e:  # whatever it is, it is this job's answer
                outcomes[i] = e
                continue
            groups[(job.top_k, job.min_confidence)].append((i, prepared))
        for (top_k, min_confidence), members in groups.items():
            try:
                preds = self._predict([p for _, p in members], top_k, min_confidence)
            except Exception as e:  # the batch failed: retry its images one by one
                if len(members) == 1:
                    outcomes[members[0][0]] = e
                    continue
                for i, prepared in members:  # one by one: only the job that fails hears of it
                    try:
                        outcomes[i] = self._predict([prepared], top_k, min_confidence)[0]
                    except Exception as one:
                        outcomes[i] = one
                continue
            for (i, _), pred in zip(members, preds, strict=True):
                outcomes[i] = pred
        return [o if o is not None else RuntimeError("no outcome") for o in outcomes]

    def _predict(self, prepared: list[Prepared], top_k: int, min_confidence: float | None) -> list[ImagePrediction]:
        return self.predictor.predict_prepared(prepared, names=["image"] * len(prepared), top_k=top_k,
                                               min_confidence=min_confidence)
