"""Ctrl-C in a paid job: stop sending, let the requests in flight finish and be cached, then exit.

Without this, a SIGINT ends the job at once while the judge still finishes (and bills) the requests
in flight, and the rerun pays for them again. SIGTERM and SIGHUP (what Slurm, Kubernetes, Ray and
`timeout` send, and a closed terminal) get the same policy: one signal policy for every paying job. `GracefulInterrupt` is the job's side; the
annotator's side is `request_stop()` (actprm.judge.openai_judge.OpenAIJudge: requests waiting for a
slot, the budget or a retry are not sent; those on the wire finish and are cached on arrival).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

#: the signals that stop a paying job gracefully (those this platform has)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class GracefulInterrupt:
    """`async with GracefulInterrupt(annotator, grace_s) as stop:` around a job's annotating loop.

    First SIGINT, SIGTERM or SIGHUP: the annotator sends nothing new (`request_stop`, where it has one), the requests
    in flight finish (and are cached) within `grace_s` seconds, said on stderr; the loop calls
    `stop.check()` between batches, which raises KeyboardInterrupt (the CLI exits 130) instead of
    writing more. A second SIGINT, or the end of the grace, cancels the job at once; it ends with
    KeyboardInterrupt as well. Without a main-thread event loop (Ray actors, threads) it does nothing.
    """

    def __init__(self, annotator: Any, grace_s: float, stream: Any = None):
        self.annotator = annotator
        self.grace_s = float(grace_s)
        self.stream = stream
        self.signals = 0
        self.cancelled = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signals > 0

    def check(self) -> None:
        """Raise KeyboardInterrupt once a stop was asked for (call between batches)."""
        if self.requested:
            raise KeyboardInterrupt

    def _say(self, text: str) -> None:
        print(f"actprm: {text}", file=self.stream or sys.stderr, flush=True)

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            self._say(f"interrupted again ({name}): stopping now; the answers of requests still in flight are lost")
            self._cancel()
            return
        stats = getattr(self.annotator, "stats", None)
        abandoned = getattr(self.annotator, "abandoned", 0)
        in_flight = getattr(stats, "in_flight", 0) - abandoned
        given_up = f"; {abandoned} given up on at their deadline" if abandoned else ""
        self._say(f"interrupted ({name}): sending no new requests; waiting up to {self.grace_s:g}s for "
                  f"{in_flight} in flight (their answers are cached){given_up}; Ctrl-C again to stop now")
        stop = getattr(self.annotator, "request_stop", None)
        if stop is not None:
            stop()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.grace_s, self._grace_over)

    def _grace_over(self) -> None:
        self._say(f"interrupted: the {self.grace_s:g}s grace is over; stopping now")
        self._cancel()

    def _cancel(self) -> None:
        if self._task is not None and not self.cancelled:
            self.cancelled = True
            self._task.cancel()

    async def __aenter__(self) -> GracefulInterrupt:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            # a signal the process was told to ignore (`nohup`: SIGHUP) stays ignored
            self._saved = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
            for signum in self._saved:
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            self._loop = None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            for signum, handler in self._saved.items():
                self._loop.remove_signal_handler(signum)  # leaves SIG_DFL (SIGINT: Python's): put back what was
                if handler is not None:
                    signal.signal(signum, handler)
        if self.cancelled and exc_type is asyncio.CancelledError:
            if self._task is not None:
                self._task.uncancel()
            raise KeyboardInterrupt
        return False


def annotate_draining(annotator: Any, rows: list[dict[str, Any]], grace_s: float) -> list[dict[str, Any]]:
    """`annotator.annotate(rows)` under the paying jobs' signal policy (GracefulInterrupt): the first SIGINT,
    SIGTERM or SIGHUP sends nothing new and caches the answers in flight, then raises KeyboardInterrupt
    (the rows are not returned half done). For a synchronous job (the loop, judge-check)."""
    async def run() -> list[dict[str, Any]]:
        try:
            async with GracefulInterrupt(annotator, grace_s) as stop:
                out = await annotator.annotate_async(list(rows))
                stop.check()
                return out
        finally:
            await annotator.aclose()

    return asyncio.run(run())


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """In a synchronous driver (the Ray recipes): SIGTERM and SIGHUP raise KeyboardInterrupt as SIGINT does,
    so the driver's Ctrl-C path (drain the actors, cache what is in flight) runs for them too. Outside the
    main thread it does nothing."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {}
    try:
        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT and signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup` stays
                saved[signum] = signal.signal(signum, raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
