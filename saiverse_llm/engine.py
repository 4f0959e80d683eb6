"""Continuous batching: each loaded model decodes every request at once, and one scheduler
thread per process runs every model's decodes (see :class:`_Scheduler` for why one).

A loaded model's context holds ``n_seq`` sequences (llama.cpp's ``n_seq_max``; each has its
own ``context_length`` of KV cells, ``kv_unified`` off as in ``llama-batched-bench``). Each
request is a :class:`Job` around the request's own
:class:`~saiverse_llm.generation.Generation` (its sampler chain and seed, stop strings,
``max_tokens``, grammar and tool-call filter). The scheduler thread repeats one *step*:

1. between steps, jobs that were cancelled, closed or timed out give their sequence back
   (``llama_memory_seq_rm`` at once), and waiting jobs take free sequences: a request
   submitted while a step runs joins at the next one;
2. one ``llama_batch`` gets one token for every decoding sequence plus, while others decode,
   at most ``prefill_chunk`` prompt tokens of joining ones (the whole ``n_batch`` when
   nobody decodes): a long prompt is evaluated over several steps, never stalling the
   others for more than one chunk;
3. one ``llama_decode``; each sequence's sampler reads its own output row
   (``llama_get_logits_ith``) and its reply builder turns the token into text, which goes to
   the job's reader.

In the steady state (every running job decoding its last token, nothing waiting) the steps
repeat without re-planning; when every job samples greedily they run in C
(:mod:`saiverse_llm.native_loop`), up to ``chunk_seconds`` of steps per call, and the
tokens of a call become text at once. A submit, a cancel or a call ends a C call after its
current step, so a joining request still waits at most one step.

A prompt's last token is always decoded as a row of its own (the rest in chunks), like a
generated token: a prompt served from the KV cache then gives the same logits as its first
run, and on the CPU backend with f32 weights a sequence's text does not depend on what else
is in the batch. (Quantized weights that llama.cpp repacks for the CPU take a different
kernel for 1 than for 4+ rows, so greedy text can differ there: llama.cpp's own server
behaves the same.)

Readers never hold anyone up. A job whose reader has ``max_unread`` chunks waiting is paused
(left out of the batch, its KV kept); when another request needs its sequence it is
preempted (its cells freed; it re-evaluates its prompt and reply so far when its reader
catches up); after ``stall_timeout`` seconds unread it is dropped, with a log line. Closing
a stream (or the garbage collector closing an abandoned one) cancels its job.

A finished sequence's tokens stay in its cells as a cached prefix (``cache_prompts``): the
next request whose prompt starts the same way (a persona's next turn) is served from them
(``Generation.cached_tokens``); any other request on that sequence overwrites them. Sequence
0's record is llama-cpp-python's own (``Llama.input_ids``/``n_tokens``), so ``Llama.reset()``
and raw ``Llama`` calls under :meth:`Engine.exclusive` stay truthful.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from saiverse_llm import native_loop
from saiverse_llm.errors import GenerationError, NanLogitsError
from saiverse_llm.generation import Generation, check_decode
from saiverse_llm.native_loop import NativeLoop
from saiverse_llm.sampling import greedy_rows

logger = logging.getLogger("saiverse_llm")
T = TypeVar("T")

#: Prompt tokens a joining request may add to a step while other sequences decode.
DEFAULT_PREFILL_CHUNK = 64
#: Chunks a stream may hold unread before its sequence pauses.
DEFAULT_MAX_UNREAD = 64
#: Seconds a paused (unread) stream keeps its state before it is dropped.
DEFAULT_STALL_TIMEOUT = 300.0
#: Seconds between the scheduler's checks for cancels while every job waits (paused
#: streams, queued or parked requests); it sleeps without a timeout when there are none.
CANCEL_POLL = 0.5
#: Seconds a reader blocked on an empty stream may be left asleep after text arrived: the
#: scheduler wakes it at most this often (and at once for its first text, when
#: ``max_unread // 2`` chunks wait, and when the request ends). Waking the reader for each
#: token of a fast model (a thread switch and a GIL hand-over per token) cost a quarter of
#: the decode rate on a tiny model; a slow model's step is longer than this anyway.
WAKE_INTERVAL = 0.002
#: Seconds of decoding one call of the compiled loop may run (:mod:`saiverse_llm.native_loop`)
#: before Python turns its tokens into text (``EngineSettings.chunk_seconds``): a fast
#: model's text then reaches its reader 20 times a second (the first token at once). Each
#: call costs ~0.2-0.6 ms around it here (2 cores: the GIL hand-over, the reader's wake-up,
#: Python's share of the text): measured on the tiny model, 2,048 tokens, 2 threads, the
#: stream reached 0.93 of llama.cpp's eval rate with 5 ms calls, 0.956 with 20 ms and
#: 0.966 with 50 ms (the bare Python loop: 0.95). A model slower than this per token
#: decodes one step per call.
DEFAULT_CHUNK_SECONDS = 0.05
#: The most steps one call of the compiled loop decodes.
NATIVE_MAX_STEPS = 256


class StreamTimeoutError(GenerationError):
    """A stream was left unread for longer than the engine's ``stall_timeout``; its
    sequence was freed."""


class EngineClosedError(GenerationError):
    """The model was unloaded while a request was waiting or running."""


@dataclass(frozen=True)
class EngineSettings:
    """How one model's scheduler runs.

    ``n_seq``: sequences decoded together (llama.cpp's ``n_seq_max``); ``prefill_chunk``:
    prompt tokens per step while others decode; ``max_unread``: chunks a reader may leave
    waiting before its sequence pauses; ``stall_timeout``: seconds a paused stream is kept;
    ``cache_prompts``: a finished sequence's KV stays as a prefix for the next request;
    ``chunk_seconds``: seconds of decode steps per call of the compiled loop (see
    :data:`DEFAULT_CHUNK_SECONDS`)."""

    n_seq: int = 1
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    max_unread: int = DEFAULT_MAX_UNREAD
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    cache_prompts: bool = True
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS

    def __post_init__(self) -> None:
        if self.n_seq < 1:
            raise ValueError(f"n_seq: bad value {self.n_seq!r}; use a positive integer")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk: bad value {self.prefill_chunk!r}; use >= 1")
        if self.max_unread < 2:
            raise ValueError(f"max_unread: bad value {self.max_unread!r}; use >= 2")
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout: bad value {self.stall_timeout!r}; use > 0 s")
        if not 0 < self.chunk_seconds <= 1:
            raise ValueError(f"chunk_seconds: bad value {self.chunk_seconds!r}; use 0 < s <= 1")


# --- one request ------------------------------------------------------------------------

_QUEUED, _RUNNING, _PARKED = "queued", "running", "parked"
_DONE, _FAILED, _CANCELLED = "done", "failed", "cancelled"
_FINAL = frozenset({_DONE, _FAILED, _CANCELLED})


class Job:
    """One request in the engine. Iterate it (one reader) for the reply's text chunks; the
    iteration ends with the reply, or raises the error that ended it. :meth:`cancel` (or
    closing the iterator) gives its sequence back.

    ``gen`` is the request's :class:`Generation` (after the end: its reply, usage and tool
    calls). ``submitted_step``/``admitted_step``: the engine's step count when the job was
    submitted and when it got a sequence (the difference is at most 1 when a sequence is
    free); ``first_token_at``: ``time.perf_counter()`` of its first sampled token."""

    def __init__(self, engine: Engine, gen: Generation) -> None:
        self.engine = engine
        self.gen = gen
        self.tokens: list[int] = list(gen.prompt)  # what belongs in its KV, in order
        self.n_past = 0  # how many of ``tokens`` are in its KV
        self.state = _QUEUED
        self.error: BaseException | None = None
        self.slot: _Slot | None = None
        self.admitted = False
        self.submitted_step = -1
        self.admitted_step = -1
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.paused_since: float | None = None
        self.preemptions = 0
        self._out: deque[str] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._reader_waiting = False
        self._woken_at = -WAKE_INTERVAL  # perf_counter() of the last wake-up
        self._wake_backlog = max(1, engine.settings.max_unread // 2)
        self._cancel = False

    @property
    def done(self) -> bool:
        return self.state in _FINAL

    @property
    def unread(self) -> int:
        return len(self._out)

    # -- reader side -------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        return self.chunks()

    def chunks(self) -> Iterator[str]:
        """The reply's text chunks as the scheduler produces them (never an empty one)."""
        out = self._out
        cond = self._cond
        engine = self.engine
        limit = engine.settings.max_unread
        while True:
            with cond:
                while not out and self.state not in _FINAL:
                    self._reader_waiting = True
                    cond.wait()
                    self._reader_waiting = False
                # the scheduler appends without this lock: take exactly what is there
                # (popleft is atomic; list(out) + out.clear() could drop a chunk pushed
                # between the two)
                n = len(out)
                was_full = n >= limit
                taken = [out.popleft() for _ in range(n)]
                final = self.state in _FINAL
            if was_full:
                engine._reader_caught_up(self)
            yield from taken
            if final and not out:
                break
        if self.state == _FAILED and self.error is not None:
            raise self.error
        if self.state == _CANCELLED:
            raise GenerationError("the request was cancelled")

    def result(self) -> str:
        """Read the whole reply (blocks until it ends)."""
        return "".join(self.chunks())

    def cancel(self) -> None:
        """Stop the request and give its sequence back before the next step (non-blocking,
        idempotent; safe from a finalizer)."""
        self.engine._cancel(self)

    # -- scheduler side ----------------------------------------------------------------

    def _wake(self, now: float, *, last: bool = False) -> None:
        """After a step that sampled for this job: wake its reader if it sleeps on an
        empty stream (at most once per :data:`WAKE_INTERVAL`, unless text piles up). A
        skipped wake is made up at a later step: the job keeps decoding until its reader
        has ``max_unread`` chunks (past the backlog that always wakes) or it ends
        (:meth:`_end` wakes).

        ``last``: the reply has ended and its last text is out: wake the reader now, so
        the text reaches it while the scheduler ends the job (the reader runs at the
        scheduler's next ctypes call, which lets go of the GIL, instead of after the
        job's bookkeeping: ~0.15-0.2 ms sooner on the tiny model here, ~1% of a
        128-token reply's streaming time)."""
        if (
            not last
            and now - self._woken_at < WAKE_INTERVAL
            and len(self._out) < self._wake_backlog
        ):
            return
        with self._cond:
            if self._reader_waiting and self._out:
                self._woken_at = now
                self._cond.notify()

    def _end(self, state: str, error: BaseException | None = None) -> None:
        with self._cond:
            self.state = state
            self.error = error
            self._cond.notify_all()


# --- sequences --------------------------------------------------------------------------


class _Slot:
    """One sequence of the context and the tokens its KV cells hold (``ids[:n]``)."""

    def __init__(self, seq: int, n_ctx: int) -> None:
        self.seq = seq
        self.ids: np.ndarray[Any, np.dtype[np.intc]] = np.zeros(n_ctx, dtype=np.intc)
        self._n = 0
        self.job: Job | None = None
        self.last_used = 0

    @property
    def n(self) -> int:
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self._n = value


class _LlamaSlot(_Slot):
    """Sequence 0: its record is llama-cpp-python's (``Llama.input_ids``/``n_tokens``)."""

    def __init__(self, llm: Any) -> None:
        self.seq = 0
        self.ids = llm.input_ids
        self._llm = llm
        self.job = None
        self.last_used = 0

    @property
    def n(self) -> int:
        return int(self._llm.n_tokens)

    @n.setter
    def n(self, value: int) -> None:
        self._llm.n_tokens = value
        self._llm._requires_eval = True  # our logits are not the ones llama-cpp-python keeps


class _Batch:
    """A ``llama_batch`` over numpy arrays we own (one sequence id per token)."""

    def __init__(self, llama_cpp: Any, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        int32_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (int32_p * capacity)(
            *(ctypes.cast(base + 4 * i, int32_p) for i in range(capacity))
        )
        raw = llama_cpp.llama_batch()
        raw.n_tokens = 0
        raw.token = self.token.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
        # raw.embd stays NULL: token input
        raw.pos = self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
        raw.n_seq_id = self.n_seq_id.ctypes.data_as(int32_p)
        raw.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(int32_p))
        raw.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.raw = raw


class _Call:
    """A function to run on the scheduler thread between steps."""

    def __init__(self, fn: Callable[[], None], idle: bool) -> None:
        self.fn = fn
        self.idle = idle
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()


# --- the engine -------------------------------------------------------------------------


class Engine:
    """The scheduler of one loaded ``llama_cpp.Llama`` (see the module docstring).

    ``llm``'s context must have been created with ``n_seq_max >= settings.n_seq``;
    ``n_ctx_seq`` is the cells each sequence may use. The engine's steps run on the
    process's one scheduler thread (:class:`_Scheduler`), from the first :meth:`submit`
    until :meth:`close`. Thread-safe."""

    def __init__(self, llm: Any, settings: EngineSettings, *, name: str, n_ctx_seq: int) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llm = llm
        self.settings = settings
        self.name = name
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = int(llm.n_batch)
        have = int(llama_cpp.llama_n_seq_max(llm.ctx))
        if have < settings.n_seq:
            raise ValueError(f"{name}: the context has n_seq_max {have} < {settings.n_seq}")
        self._slots: list[_Slot] = [_LlamaSlot(llm)] + [
            _Slot(s, n_ctx_seq) for s in range(1, settings.n_seq)
        ]
        self._batch = _Batch(llama_cpp, self.n_batch)
        self._positions = np.arange(n_ctx_seq + self.n_batch, dtype=np.int32)
        #: 2-D views of llama.cpp's output buffer for :func:`greedy_rows`
        self._row_views: dict[tuple[int, int], np.ndarray[Any, np.dtype[np.float32]]] = {}
        # re-entrant: a finalizer that cancels a job may run on a thread that holds it
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[Job] = deque()  # waiting for a sequence (FIFO)
        self._parked: list[Job] = []  # preempted, waiting for their reader
        self._cancels: deque[Job] = deque()
        self._calls: deque[_Call] = deque()
        self._in_step = False
        self._closing = False
        self._held = False  # exclusive(): the caller uses the Llama; the scheduler skips it
        self._registered = False
        self._seen = 0  # the scheduler's notify count when this engine's work began
        self._t_decode = 0.0  # seconds of the last timed decode (trace)
        self._busy = False  # its last turn on the scheduler did work
        self._holder: int | None = None  # thread id inside exclusive()
        self._stopped = threading.Event()  # set by the scheduler once it dropped this engine
        #: decode steps so far; a C int64 that the compiled loop advances step by step, so a
        #: request submitted during one of its calls reads the true count (join waits)
        self._steps = ctypes.c_int64(0)
        self.rows = 0
        self.last_join_wait = -1  # steps the last admitted request waited for a sequence
        self.peak_sequences = 0  # the most sequences one step has decoded
        self.native_calls = 0  # calls of the compiled loop
        #: when a list: (time.perf_counter() after the steps, steps, tokens sampled per
        #: step, seconds in llama_decode) per step, or per call of the compiled loop
        #: (benchmarks set it)
        self.trace: list[tuple[float, int, int, float]] | None = None
        #: False: the Python steady loop even where the compiled one could run (tests
        #: compare the two)
        self.native = True
        #: the compiled loop's tokens (a ctypes array: a slice of it is a list at once)
        self._native_out = (ctypes.c_int32 * (NATIVE_MAX_STEPS * settings.n_seq))()
        native_loop.get(wait=False)  # built (or found) on a thread of its own meanwhile
        self._t_step = 0.0  # wall seconds per step of the compiled loop's last call

    # -- public ----------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Decode steps this engine has run."""
        return self._steps.value

    @steps.setter
    def steps(self, value: int) -> None:
        self._steps.value = value

    def submit(self, gen: Generation) -> Job:
        """Queue ``gen``; it joins the batch at the next step. Iterate the returned job."""
        if len(gen.prompt) >= self.n_ctx_seq:
            raise GenerationError(
                f"{self.name}: the prompt has {len(gen.prompt)} tokens but a sequence holds "
                f"{self.n_ctx_seq}"
            )
        job = Job(self, gen)
        with self._cond:
            if self._closing:
                raise EngineClosedError(f"{self.name}: the model has been unloaded")
            job.submitted_step = self.steps
            self._queue.append(job)
            self._start()
            self._cond.notify_all()
        _scheduler.notify()
        return job

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Use the ``Llama`` directly (its own calls decode sequence 0): waits until no
        sequence runs (paused ones are preempted); the scheduler leaves this model alone
        meanwhile (other models go on). The other sequences' cached prefixes are dropped
        first (llama-cpp-python's calls trim every sequence).

        The calls then decode on the caller's thread. With an OpenMP CPU build that slows
        every later decode of the process (see :class:`_Scheduler`): prefer
        :meth:`run_exclusive`, which runs a function on the scheduler thread."""

        left: list[bool] = []  # the caller is gone (its wait was interrupted, or it is done)
        me = threading.get_ident()
        with self._cond:
            if self._held and self._holder == me:
                raise RuntimeError(f"{self.name}: `with model.lock:` is not re-entrant")

        def hold() -> None:
            self._forget_others()
            with self._cond:
                if not left:
                    self._held = True
                    self._holder = me

        call = self._call(hold, idle=True, wait=False)
        try:
            call.finished.wait()
            if call.error is not None:
                raise call.error
            yield
        finally:
            with self._cond:
                left.append(True)
                if self._holder == me:
                    self._held = False
                    self._holder = None
                self._cond.notify_all()
            _scheduler.notify()

    def run_exclusive(self, fn: Callable[[Any], T]) -> T:
        """``fn(llm)`` on the scheduler thread, the thread every decode of the process
        runs on, once no sequence of this model runs; returns its result (raises what it
        raises). For direct use of the ``Llama`` (sequence 0; the other sequences' cached
        prefixes are dropped first) without a decoding thread of its own."""
        box: list[T] = []

        def run() -> None:
            self._forget_others()
            box.append(fn(self.llm))

        self._call(run, idle=True)
        return box[0]

    def flush(self) -> None:
        """Drop the cached prefixes of idle sequences (their cells are freed)."""

        def forget_idle() -> None:
            for slot in self._slots:
                if slot.job is None:
                    self._forget(slot)

        self._call(forget_idle)

    def cells_used(self) -> int:
        """KV cells in use over all sequences (llama.cpp's memory: ``seq_pos_max -
        seq_pos_min + 1`` per non-empty sequence), read between two steps."""
        lc = self._lc
        box: list[int] = []

        def count() -> None:
            mem = lc.llama_get_memory(self.llm.ctx)
            total = 0
            for slot in self._slots:
                hi = int(lc.llama_memory_seq_pos_max(mem, slot.seq))
                if hi >= 0:
                    total += hi - int(lc.llama_memory_seq_pos_min(mem, slot.seq)) + 1
            box.append(total)

        self._call(count)
        return box[0]

    def stats(self) -> dict[str, Any]:
        """Sequences running/paused, queued and parked jobs, cached tokens, steps so far,
        the most sequences one step decoded (``peak_sequences``), calls of the compiled
        loop (``native_calls``)."""
        with self._cond:
            running = [s.job for s in self._slots if s.job is not None]
            return {
                "n_seq": self.settings.n_seq,
                "running": len(running),
                "paused": sum(1 for j in running if j.paused_since is not None),
                "queued": len(self._queue),
                "parked": len(self._parked),
                "cached_tokens": sum(s.n for s in self._slots if s.job is None),
                "steps": self.steps,
                "rows": self.rows,
                "last_join_wait": self.last_join_wait,
                "peak_sequences": self.peak_sequences,
                "native_calls": self.native_calls,
            }

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued, running or parked; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (
                self._queue
                or self._parked
                or self._cancels
                or self._calls
                or self._in_step
                or any(s.job is not None for s in self._slots)
            ):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(left, 0.05))
        return True

    def on_scheduler_thread(self) -> bool:
        """True when called on the scheduler thread (e.g. from a finalizer)."""
        return _scheduler.on_thread()

    def close(self) -> None:
        """Stop the scheduler; jobs still waiting or running fail with
        :class:`EngineClosedError`. Called before the model is freed: waits for a thread
        inside :meth:`exclusive` to leave it (the ``Llama`` is in its hands)."""
        with self._cond:
            if self._held and self._holder == threading.get_ident():
                raise RuntimeError(
                    f"{self.name}: this thread is inside `with model.lock:`; leave it before "
                    "the model is unloaded"
                )
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
            registered = self._registered
        if registered and not _scheduler.on_thread():
            # a finalizer may run this on a thread that holds the scheduler's lock: never
            # block on it, knock until the scheduler has dropped this engine
            while True:
                _scheduler.notify(blocking=False)
                if self._stopped.wait(0.05):
                    break
        self._abandon(EngineClosedError(f"{self.name}: the model was unloaded"))

    def _abandon(self, error: BaseException) -> None:
        """Fail every job and call still here with ``error`` (the engine has stopped)."""
        with self._cond:
            jobs = [s.job for s in self._slots if s.job is not None]
            jobs += [*self._queue, *self._parked]
            self._queue.clear()
            self._parked.clear()
            for slot in self._slots:
                slot.job = None
            calls = list(self._calls)
            self._calls.clear()
        for job in jobs:
            job.gen.close()
            job._end(_FAILED, error)
        for call in calls:
            call.error = error
            call.finished.set()

    def _start(self) -> None:
        """Under the lock: hand this engine to the scheduler thread, once."""
        if not self._registered:
            self._registered = True
            _scheduler.add(self)

    def _call(self, fn: Callable[[], None], *, idle: bool = False, wait: bool = True) -> _Call:
        """Run ``fn`` on the scheduler thread between two steps (after every running
        sequence ended when ``idle``: nobody is admitted meanwhile)."""
        call = _Call(fn, idle)
        with self._cond:
            if self._closing:
                raise EngineClosedError(f"{self.name}: the model has been unloaded")
            self._calls.append(call)
            self._start()
            self._cond.notify_all()
        _scheduler.notify()
        if wait:
            call.finished.wait()
            if call.error is not None:
                raise call.error
        return call

    # -- called by readers -------------------------------------------------------------

    def _cancel(self, job: Job) -> None:
        # May run in a finalizer (an abandoned stream collected by the garbage collector),
        # on any thread and at any allocation, even one that holds a job's or this engine's
        # lock: never block here. The request is queued for the scheduler, which polls
        # while jobs exist (:meth:`_next_deadline`), and woken when the lock is free.
        if job.state in _FINAL or job._cancel:
            return
        job._cancel = True
        self._cancels.append(job)  # a deque: append is atomic
        if self._cond.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()
        _scheduler.notify(blocking=False)

    def _reader_caught_up(self, job: Job) -> None:
        with self._cond:
            self._cond.notify_all()
        _scheduler.notify()

    # -- the scheduler thread ------------------------------------------------------------

    def _tick(self, seen: int) -> bool | object:
        """On the scheduler thread: this engine's next piece of work, a call or a step
        (then its repeats while nothing else is to be done, ``seen`` being the scheduler's
        notify count when this round began: any later arrival, even of an engine not yet in
        the round, ends the repeats). True when it did something,
        False when it has nothing to do, ``_CLOSED`` once it is closing. The scheduler thread
        is the only one that touches the context (decode, sampling, the KV memory) while
        the engine runs."""
        cond = self._cond
        try:
            with cond:
                if self._closing and not self._held:  # close() waits for the holder
                    return _CLOSED
                self._seen = seen  # the scheduler's count when it listed the engines
                work = self._next_work()
                self._busy = work is not None
                if work is None:
                    return False
                self._in_step = isinstance(work, list)
            try:
                if isinstance(work, _Call):
                    work.run()
                else:
                    self._step(work)
                    self._repeat(work)  # while nothing else is to be done: no lock, no plan
            finally:
                with cond:
                    self._in_step = False
                    cond.notify_all()
        except BaseException as exc:  # a bug (or SystemExit from a hook): this model only
            logger.exception("%s: the batching scheduler failed; the model is stopped", self.name)
            with cond:
                self._in_step = False
                self._closing = True
                cond.notify_all()
            self._abandon(EngineClosedError(f"{self.name}: the scheduler failed ({exc!r})"))
            return _CLOSED
        return True

    def _deadline(self) -> float | None:
        """Seconds the scheduler may sleep as far as this engine is concerned (None:
        until woken)."""
        with self._cond:
            if self._closing and not self._held:
                return 0.0
            return self._next_deadline(time.perf_counter())

    def _next_work(self) -> list[tuple[Job, int, bool]] | _Call | None:
        """Under the lock: housekeeping, then a call to run or what the next step decodes,
        as (job, rows, with logits); None when there is nothing to do (or the caller of
        :meth:`exclusive` holds the model)."""
        if self._held:
            return None
        now = time.perf_counter()
        self._housekeeping(now)
        if self._calls:
            call = self._calls[0]
            running = any(s.job is not None for s in self._slots)
            if not call.idle or not running:
                return self._calls.popleft()
            self._preempt_paused(all_of_them=True)
        plan = self._plan()
        return plan or None

    def _same_plan(self, plan: list[tuple[Job, int, bool]]) -> bool:
        """Without the lock, after a step: True when the next step decodes ``plan`` again
        (one sampled token for each of its jobs, still running, none near a pause, every
        running job in it) and nothing waits (a cancel, a submit, a call, a parked job, a
        close): what :meth:`_next_work` would return. A step of one prompt token without
        logits (a prompt two tokens past its cache) is not repeated: its next step is the
        prompt's last token, with logits. A submit or cancel that lands just after this
        look is seen after the next step, as when it lands while a step runs."""
        if self._waiting():
            return False
        limit = self.settings.max_unread
        for job, n, want in plan:
            if n != 1 or not want or job.state != _RUNNING or job._cancel:
                return False
            if len(job._out) >= limit:
                return False
        running = 0
        for slot in self._slots:
            if slot.job is not None:
                running += 1
        return running == len(plan)

    def _housekeeping(self, now: float) -> None:
        # cancelled jobs give their sequence back at once
        while self._cancels:
            self._finish(self._cancels.popleft(), _CANCELLED, None, keep=False)
        # pausing, resuming and stall timeouts
        limit = self.settings.max_unread
        timeout = self.settings.stall_timeout
        for slot in self._slots:
            running = slot.job
            if running is None:
                continue
            if running.unread >= limit:
                if running.paused_since is None:
                    running.paused_since = now
                    logger.debug("%s: stream unread, sequence %d paused", self.name, slot.seq)
                elif now - running.paused_since > timeout:
                    self._stalled(running, now)
            else:
                running.paused_since = None
        for parked in list(self._parked) if self._parked else ():
            if parked.unread < limit // 2:
                self._parked.remove(parked)
                parked.paused_since = None
                parked.state = _QUEUED
                self._queue.append(parked)
            elif parked.paused_since is not None and now - parked.paused_since > timeout:
                self._parked.remove(parked)
                self._stalled(parked, now)
        # admissions (none while a call waits for the sequences to drain)
        if self._calls and any(c.idle for c in self._calls):
            return
        while self._queue:
            free = self._free_slot(self._queue[0]) or self._preempt_paused(all_of_them=False)
            if free is None:
                break
            self._admit(self._queue.popleft(), free)

    def _stalled(self, job: Job, now: float) -> None:
        waited = now - (job.paused_since or now)
        logger.warning(
            "%s: a stream was left unread for %.0f s (%d chunks waiting); its sequence is "
            "freed and the request ended. Fix: read streams to the end or close() them",
            self.name,
            waited,
            job.unread,
        )
        self._finish(
            job,
            _FAILED,
            StreamTimeoutError(
                f"{self.name}: the stream was left unread for {waited:.0f} s "
                f"(stall_timeout {self.settings.stall_timeout:g} s); its sequence was freed"
            ),
            keep=False,
        )

    def _next_deadline(self, now: float) -> float | None:
        paused = [
            j.paused_since
            for s in self._slots
            if (j := s.job) is not None and j.paused_since is not None
        ]
        paused += [j.paused_since for j in self._parked if j.paused_since is not None]
        # while jobs exist, poll now and then: a cancel from a finalizer may not have been
        # able to wake this thread (see _cancel)
        poll = CANCEL_POLL if self._queue or self._parked or paused else None
        if not paused:
            return poll
        wait = max(0.01, min(paused) + self.settings.stall_timeout - now + 0.01)
        return min(wait, CANCEL_POLL)

    def _free_slot(self, job: Job) -> _Slot | None:
        """The free sequence that already holds the longest prefix of ``job``'s tokens;
        among equals, the one that keeps the running sequences' ids closest together, then
        the one used least recently.

        Close ids matter: llama.cpp's KV cache with a stream per sequence (``kv_unified``
        off) computes a step's attention over every stream from the lowest to the highest
        sequence id in the batch. Measured here (tiny model, 2 threads, 8 sequences): 2 rows
        on sequences 0 and 7 decoded at ~5,000 t/s, on 0 and 1 at ~9,500; 4 rows on
        0, 2, 5, 7 at ~4,900, on 0-3 at ~10,000."""
        free = [s for s in self._slots if s.job is None]
        if not free:
            return None
        running = [s.seq for s in self._slots if s.job is not None]
        low = min(running, default=None)
        high = max(running, default=None)
        want = np.asarray(job.tokens[:-1], dtype=np.intc)

        def rank(slot: _Slot) -> tuple[int, int, int]:
            span = 0 if low is None or high is None else max(high, slot.seq) - min(low, slot.seq)
            return (_common_prefix(slot.ids, slot.n, want), -span, -slot.last_used)

        return max(free, key=rank)

    def _preempt_paused(self, *, all_of_them: bool) -> _Slot | None:
        """Take the sequence of the job paused longest (its reader is behind); it re-joins
        when the reader catches up. Returns the freed slot."""
        paused = [s for s in self._slots if s.job is not None and s.job.paused_since is not None]
        paused.sort(key=lambda s: s.job.paused_since or 0.0)  # type: ignore[union-attr]
        freed: _Slot | None = None
        for slot in paused if all_of_them else paused[:1]:
            job = slot.job
            assert job is not None
            logger.info(
                "%s: sequence %d paused (reader %d chunks behind) gives way to another request",
                self.name,
                slot.seq,
                job.unread,
            )
            self._release(slot, keep=False)
            job.slot = None
            job.n_past = 0
            job.state = _PARKED
            job.preemptions += 1
            self._parked.append(job)
            freed = slot
        return freed

    def _admit(self, job: Job, slot: _Slot) -> None:
        keep = _common_prefix(slot.ids, slot.n, np.asarray(job.tokens[:-1], dtype=np.intc))
        mem = self._lc.llama_get_memory(self.llm.ctx)
        if not self._lc.llama_memory_seq_rm(mem, slot.seq, keep, -1):
            self._lc.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            keep = 0
        slot.n = keep
        slot.job = job
        job.slot = slot
        job.n_past = keep
        job.state = _RUNNING
        if not job.admitted:
            job.admitted = True
            job.admitted_step = self.steps
            self.last_join_wait = job.admitted_step - job.submitted_step
            job.gen.cached_tokens = keep

    def _plan(self) -> list[tuple[Job, int, bool]]:
        decode: list[tuple[Job, int, bool]] = []
        prefill: list[Job] = []
        for slot in self._slots:
            job = slot.job
            if job is None or job.paused_since is not None:
                continue
            if len(job.tokens) - job.n_past == 1:
                decode.append((job, 1, True))
            else:
                prefill.append(job)
        budget = self.n_batch - len(decode)
        if decode:
            budget = min(budget, self.settings.prefill_chunk)
        plan = decode
        for job in sorted(prefill, key=lambda j: j.admitted_step):
            take = min(budget, len(job.tokens) - job.n_past - 1)  # the last token alone
            if take <= 0:
                break
            plan.append((job, take, False))
            budget -= take
        return plan

    def _step(self, plan: list[tuple[Job, int, bool]]) -> None:
        b = self._batch
        token, pos, seq, logits = b.token, b.pos, b.seq, b.logits
        row = 0
        outputs: list[tuple[Job, int]] = []
        for job, n, want in plan:
            slot = job.slot
            assert slot is not None
            start = job.n_past
            if n == 1:  # a decoding sequence: one token
                token[row] = job.tokens[start]
                pos[row] = start
                seq[row] = slot.seq
                logits[row] = want
            else:
                token[row : row + n] = job.tokens[start : start + n]
                pos[row : row + n] = self._positions[start : start + n]
                seq[row : row + n] = slot.seq
                logits[row : row + n] = 0
                logits[row + n - 1] = want
            if want:
                outputs.append((job, row + n - 1))
            row += n
        b.raw.n_tokens = row
        self.peak_sequences = max(self.peak_sequences, len(plan))
        ctx = self.llm.ctx
        t0 = time.perf_counter()
        rc = self._lc.llama_decode(ctx, b.raw)
        t_decode = time.perf_counter() - t0
        self._steps.value += 1  # counted as it ends (the compiled loop counts the same way)
        self.rows += row
        if rc:
            self._decode_failed(plan, rc)
        else:
            steps = self.steps
            for job, n, _ in plan:
                slot = job.slot
                assert slot is not None
                start = job.n_past
                end = start + n
                if n == 1:
                    slot.ids[start] = job.tokens[start]
                else:
                    slot.ids[start:end] = job.tokens[start:end]
                job.n_past = end
                slot.n = end
                slot.last_used = steps
            for job, idx in outputs:
                self._sample(job, ctx, idx)
            # readers are woken after the whole step: they run while the next decode
            # (which releases the GIL) does, instead of taking it from the sampling
            now = time.perf_counter()
            for job, _ in outputs:
                job._wake(now)
            if self.trace is not None:
                self.trace.append((time.perf_counter(), 1, len(outputs), t_decode))

    def _repeat(self, plan: list[tuple[Job, int, bool]]) -> None:
        """Decode ``plan`` again, step after step, while nothing else is to be done
        (:meth:`_same_plan`): the steady state of streaming, every running job decoding
        its last sampled token.

        The lean form of :meth:`_step`, because this loop is all that stands between two
        decodes of a fast model: a tiny model decodes a token in ~0.1 ms, so each
        microsecond of Python here costs ~1% of its streaming rate. The batch's sequence
        ids, output flags and size stay as the last :meth:`_step` of this plan left them;
        only each row's token and position are written. No job can join meanwhile (only
        :meth:`_next_work` admits), so the loop only has to notice a job that ended or
        paused, and work that arrived (:meth:`_waiting`)."""
        if not self._same_plan(plan):
            return
        loop = self._native_loop(plan)
        if loop is not None:
            self._repeat_native(plan, loop)
            return
        if len(plan) == 1:
            self._repeat_one(plan)
            return
        k = len(plan)
        b = self._batch
        token, pos, raw = b.token, b.pos, b.raw
        decode = self._decoder()
        ctx = self.llm.ctx
        limit = self.settings.max_unread
        jobs, slots, starts = self._steady_rows(plan)
        gens = [job.gen for job in jobs]
        samplers = [gen.sampler for gen in gens]
        greedy = all(s.route == "greedy" for s in samplers)
        n_vocab = samplers[0].vocab.n_vocab
        views = self._row_views
        positions = pos[:k]
        clock = time.perf_counter
        counter = self._steps
        ended: list[tuple[Job, str, BaseException | None]] = []
        rc = 0
        try:
            while True:
                counter.value += 1
                rc = decode(ctx, raw)
                self.rows += k
                if rc:
                    break
                positions += 1  # every row decoded its token: n_past + 1
                sampled = greedy_rows(ctx, samplers, n_vocab, views) if greedy else None
                errors: dict[int, Exception] = {}
                if sampled is None:
                    sampled = []
                    for row, sampler in enumerate(samplers):
                        try:
                            sampled.append(sampler.sample(ctx, row))
                        except Exception as exc:  # this request only (its grammar, ...)
                            sampled.append(0)
                            errors[row] = exc
                token[:k] = sampled
                go_on = True
                now = clock()
                for row in range(k):
                    job = jobs[row]
                    gen = gens[row]
                    out = job._out
                    if errors and row in errors:
                        ended.append((job, _FAILED, errors[row]))
                        go_on = False
                        continue
                    try:
                        text = gen.accept(sampled[row])
                        if text:
                            out.append(text)
                        if gen.reply.done:
                            tail = gen.finish()
                            if tail:
                                out.append(tail)
                    except Exception as exc:  # a hook or the tool-call filter: this request
                        ended.append((job, _FAILED, exc))
                        go_on = False
                        continue
                    if gen.reply.done:
                        job._wake(now, last=True)
                        ended.append((job, _DONE, None))
                        go_on = False
                        continue
                    job.tokens.append(gen.last_token)
                    if now - job._woken_at >= WAKE_INTERVAL or len(out) >= job._wake_backlog:
                        job._wake(now)
                    if job._cancel or len(out) >= limit:
                        go_on = False
                if self.trace is not None:
                    self.trace.append((clock(), 1, k, self._t_decode))
                if not go_on or self._waiting():
                    break
        finally:
            for row, job in enumerate(jobs):
                job.n_past = int(positions[row])
            self._record(jobs, slots, starts)
        self._end_rows(ended)
        if rc:
            self._decode_failed(plan, rc)

    def _repeat_one(self, plan: list[tuple[Job, int, bool]]) -> None:
        """:meth:`_repeat` for a single stream (the most common case, and the one where a
        fast model's rate shows every microsecond): everything the loop needs is a local,
        and the sequence's record (``slot.ids``/``slot.n``) is written when the loop ends
        or the job does, not per token."""
        job = plan[0][0]
        slot = job.slot
        assert slot is not None
        b = self._batch
        token, pos, raw = b.token, b.pos, b.raw
        decode = self._decoder()
        ctx = self.llm.ctx
        limit = self.settings.max_unread
        tokens, out, gen = job.tokens, job._out, job.gen
        reply, step = gen.reply, gen.step
        clock = time.perf_counter
        backlog = job._wake_backlog
        start = n = job.n_past  # tokens[start:n] are decoded but not yet in the record
        failed: BaseException | None = None
        counter = self._steps
        try:
            while True:
                counter.value += 1
                token[0] = tokens[n]
                pos[0] = n
                rc = decode(ctx, raw)
                self.rows += 1
                if rc:
                    break
                n += 1
                job.n_past = n
                try:
                    text = step(ctx, 0)
                    if text:
                        out.append(text)
                    if reply.done:
                        tail = gen.finish()
                        if tail:
                            out.append(tail)
                except Exception as exc:  # a hook or the tool-call filter: this request only
                    failed = exc
                    break
                if reply.done:
                    job._wake(clock(), last=True)
                    break
                tokens.append(gen.last_token)
                now = clock()
                if now - job._woken_at >= WAKE_INTERVAL or len(out) >= backlog:
                    job._wake(now)
                if self.trace is not None:
                    self.trace.append((clock(), 1, 1, self._t_decode))
                if job._cancel or len(out) >= limit or self._waiting():
                    return
        finally:
            slot.ids[start:n] = tokens[start:n]
            slot.n = n
            slot.last_used = self.steps
        if rc:
            self._decode_failed(plan, rc)
            return
        if self.trace is not None:
            self.trace.append((clock(), 1, 1, self._t_decode))
        with self._cond:
            if failed is not None:
                self._finish(job, _FAILED, failed, keep=False)
            else:
                self._finish(job, _DONE, None, keep=self.settings.cache_prompts)

    def _native_loop(self, plan: list[tuple[Job, int, bool]]) -> NativeLoop | None:
        """The compiled loop when it may run ``plan``: every job samples greedily (its
        sampler's "greedy" route: no grammar, no penalties, temperature 0) and it is on
        (:attr:`native`, :func:`saiverse_llm.native_loop.get`)."""
        if not self.native:
            return None
        for job, _, _ in plan:
            if job.gen.sampler.route != "greedy":
                return None
        return native_loop.get(wait=False)  # None while it is being built

    def _repeat_native(self, plan: list[tuple[Job, int, bool]], loop: NativeLoop) -> None:
        """:meth:`_repeat` with the decode steps in C: one call decodes up to
        ``settings.chunk_seconds`` of steps (each row's next token by argmax), and the
        tokens are turned into text once per call (``ReplyBuilder.push_many``). The call
        returns early when work arrives for the scheduler (a submit, a cancel, a call: the
        scheduler's ``knock`` changes, so a joining request still waits at most one step)
        or a row samples an end-of-generation token; another model with work gets one step
        per call, as in the Python loop.

        A row whose reply ends (a stop string, ``max_tokens`` of another row's length)
        before the call's last step has decoded tokens past its end: they are dropped from
        its KV cells (``llama_memory_seq_rm``; a memory that cannot drop a tail loses the
        sequence's cached prefix instead), so its record and cells hold what the Python
        loop's would. A row whose hook or tool-call filter raises, or whose logits hold NaN
        (:class:`~saiverse_llm.errors.NanLogitsError`, as the Python loop), fails alone (its
        cells are freed). The same tokens as the Python loop: greedy is an argmax either way."""
        k = len(plan)
        b = self._batch
        pos, raw = b.pos, b.raw
        lc = self._lc
        ctx = self.llm.ctx
        limit = self.settings.max_unread
        jobs, slots, starts = self._steady_rows(plan)
        gens = [job.gen for job in jobs]
        replies = [gen.reply for gen in gens]
        vocab = gens[0].sampler.vocab
        n_vocab = vocab.n_vocab
        eog = vocab.eog_flags()
        ignore = np.array([gen.sampler.params.ignore_eos for gen in gens], dtype=np.uint8)
        out = self._native_out
        knock = _scheduler.knock
        # Readers are woken right before the next call, which lets go of the GIL: a reader
        # woken while this thread still runs Python would take a core from it (2 OpenMP
        # threads and a reader on 2 cores) only to wait for the GIL.
        wake: list[Job] = []
        now = 0.0
        clock = time.perf_counter
        ended: list[tuple[Job, str, BaseException | None]] = []
        rc = 0
        try:
            while True:
                room = min(reply.max_tokens - reply.n_tokens for reply in replies)
                # each row's position is its n_past here (a call advances both)
                top = max(job.n_past for job in jobs)
                room = min(room, self.n_ctx_seq - top, NATIVE_MAX_STEPS)
                if _scheduler.others_want(self) or self._t_step <= 0.0:
                    want = 1
                else:
                    want = max(1, int(self.settings.chunk_seconds / self._t_step))
                steps = min(want, room)
                if steps < 1:  # the Python step decodes (and reports) what comes next
                    break
                for job in wake:  # just before the GIL is let go: see below
                    job._wake(now)
                wake.clear()
                t0 = clock()
                done, rc, t_decode = loop.steps(
                    ctx, raw, k, n_vocab, steps, eog, ignore, knock, self._seen, out, self._steps
                )
                self.native_calls += 1
                if done:
                    self._t_step = (clock() - t0) / done
                self.rows += done * k  # (the loop advanced self.steps)
                self._t_decode = t_decode
                go_on = done > 0
                now = clock()
                for row in range(k if done else 0):
                    job, gen, reply = jobs[row], gens[row], replies[row]
                    start = job.n_past
                    sampled: list[int] = out[row : done * k : k]  # step by step, row by row
                    failed: BaseException | None = None
                    if sampled[-1] < 0:  # NaN logits at the call's last step (which ended it)
                        sampled.pop()
                        failed = NanLogitsError()  # unless the reply ended before that step
                    try:
                        text, used = reply.push_many(sampled) if sampled else ("", 0)
                        if text:
                            job._out.append(text)
                        if reply.done:
                            failed = None
                            tail = gen.finish()
                            if tail:
                                job._out.append(tail)
                    except Exception as exc:  # a hook or the tool-call filter: this request
                        failed = exc
                    if failed is not None:
                        job.tokens.extend(sampled)  # what its cells hold (freed as it fails)
                        job.n_past = start + done
                        ended.append((job, _FAILED, failed))
                        go_on = False
                        continue
                    if reply.done:  # its last token is not decoded (as in the Python loop)
                        job._wake(now, last=True)
                        gen.last_token = sampled[used - 1]
                        job.tokens.extend(sampled[: used - 1])
                        job.n_past = start + used
                        ended.append((job, _DONE, None))
                        go_on = False
                        continue
                    gen.last_token = sampled[-1]
                    job.tokens.extend(sampled)
                    job.n_past = start + done
                    if now - job._woken_at >= WAKE_INTERVAL or len(job._out) >= job._wake_backlog:
                        wake.append(job)
                    if job._cancel or len(job._out) >= limit:
                        go_on = False
                if self.trace is not None and done:
                    self.trace.append((clock(), done, k, t_decode))
                if rc or not go_on or self._waiting():
                    break
        finally:
            for job in wake:
                job._wake(clock())
            # a ctypes call lets go of the GIL: a reader woken for its reply's last text
            # (``_wake(last=True)``) takes it here, before the bookkeeping below
            mem = lc.llama_get_memory(ctx)
            self._record(jobs, slots, starts)
            for row, job in enumerate(jobs):
                slot = slots[row]
                n = job.n_past
                if int(pos[row]) > n and not (  # decoded past the end of its reply
                    lc.llama_memory_seq_rm(mem, slot.seq, n, -1)
                    and lc.llama_memory_seq_pos_max(mem, slot.seq) == n - 1
                ):  # a memory that cannot drop a tail (recurrent): drop the sequence
                    lc.llama_memory_seq_rm(mem, slot.seq, -1, -1)
                    slot.n = 0
        self._end_rows(ended)  # before a decode failure's: these ended before the failed step
        if rc:
            self._decode_failed(plan, rc)

    def _steady_rows(
        self, plan: list[tuple[Job, int, bool]]
    ) -> tuple[list[Job], list[_Slot], list[int]]:
        """A steady loop's jobs, their sequences and where each sequence's record is written
        up to; each job's next token and position go into its row of the batch (sequence
        ids, output flags and size stay as the plan's last :meth:`_step` left them)."""
        b = self._batch
        jobs = [job for job, _, _ in plan]
        slots: list[_Slot] = []
        for row, job in enumerate(jobs):
            assert job.slot is not None
            slots.append(job.slot)
            b.token[row] = job.tokens[job.n_past]
            b.pos[row] = job.n_past
        return jobs, slots, [job.n_past for job in jobs]

    def _record(self, jobs: list[Job], slots: list[_Slot], starts: list[int]) -> None:
        """After a steady loop: each sequence's record holds its job's tokens up to
        ``n_past`` (written from ``starts`` on)."""
        steps = self.steps
        for job, slot, start in zip(jobs, slots, starts, strict=True):
            n = job.n_past
            slot.ids[start:n] = job.tokens[start:n]
            slot.n = n
            slot.last_used = steps

    def _end_rows(self, ended: list[tuple[Job, str, BaseException | None]]) -> None:
        """After a steady loop: end the jobs that ended in it (a finished one keeps its
        cells as a cached prefix when ``cache_prompts``)."""
        if not ended:
            return
        with self._cond:
            for job, state, error in ended:
                keep = state == _DONE and self.settings.cache_prompts
                self._finish(job, state, error, keep=keep)

    def _decoder(self) -> Callable[[Any, Any], int]:
        """``llama_decode`` for a steady loop: the C function itself, or, while
        :attr:`trace` is on when the loop starts, one that keeps its seconds in
        ``_t_decode`` for the trace."""
        decode: Callable[[Any, Any], int] = self._lc.llama_decode
        if self.trace is None:
            return decode

        def timed(ctx: Any, batch: Any) -> int:
            t0 = time.perf_counter()
            rc = decode(ctx, batch)
            self._t_decode = time.perf_counter() - t0
            return rc

        return timed

    def _waiting(self) -> bool:
        """Work for :meth:`_next_work` (without the lock): a cancel, a request, a call, a
        parked job, a close; or other models' work (the scheduler thread is shared)."""
        return bool(
            self._pending()
            or self._closing
            or _scheduler.seq != self._seen
            or _scheduler.others_want(self)
        )

    def _pending(self) -> bool:
        """Without the lock: a cancel, a request, a call or a parked job waits here."""
        return bool(self._cancels or self._queue or self._calls or self._parked)

    def _wants(self) -> bool:
        """Without the lock: this engine has work waiting, or did work at its last turn."""
        return self._busy or self._pending()

    def _decode_failed(self, plan: list[tuple[Job, int, bool]], rc: int) -> None:
        """``llama_decode`` returned ``rc`` != 0: every job of the step fails with it."""
        try:
            check_decode(rc)
        except RuntimeError as exc:
            with self._cond:
                for job, _, _ in plan:
                    if job.state == _RUNNING:
                        self._finish(job, _FAILED, exc, keep=False)

    def _sample(self, job: Job, ctx: Any, idx: int) -> None:
        gen = job.gen
        try:
            text = gen.step(ctx, idx)
            if text:
                job._out.append(text)  # the reader is woken by Job._wake, once per step
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
            if gen.reply.done:
                tail = gen.finish()
                if tail:
                    job._out.append(tail)
        except Exception as exc:  # a hook or the tool-call filter: this request only
            with self._cond:
                self._finish(job, _FAILED, exc, keep=False)
            return
        if gen.reply.done:
            with self._cond:
                self._finish(job, _DONE, None, keep=self.settings.cache_prompts)
        else:
            job.tokens.append(gen.last_token)

    def _finish(self, job: Job, state: str, error: BaseException | None, *, keep: bool) -> None:
        """Under the lock: end ``job``; its sequence is freed (or kept as a prefix)."""
        if job.state in _FINAL:
            return
        slot = job.slot
        if slot is not None:
            self._release(slot, keep=keep)
            job.slot = None
        with contextlib.suppress(ValueError):
            self._queue.remove(job)
        with contextlib.suppress(ValueError):
            self._parked.remove(job)
        job.gen.close()
        job._end(state, error)
        self._cond.notify_all()

    def _forget_others(self) -> None:
        """Before direct use of the ``Llama`` (its calls trim every sequence): drop the
        cached prefixes of sequences 1.. (sequence 0's record is the ``Llama``'s own)."""
        for slot in self._slots[1:]:
            self._forget(slot)

    def _release(self, slot: _Slot, *, keep: bool) -> None:
        slot.job = None
        if not keep:
            self._forget(slot)

    def _forget(self, slot: _Slot) -> None:
        mem = self._lc.llama_get_memory(self.llm.ctx)
        self._lc.llama_memory_seq_rm(mem, slot.seq, -1, -1)
        slot.n = 0


# --- the process's scheduler thread -------------------------------------------------------

_CLOSED = object()


class _Scheduler:
    """The one thread of the process that runs every engine's steps (every ``llama_decode``
    of every loaded model).

    One thread, not one per model: llama.cpp's CPU backend in an OpenMP build (the default
    on Linux) runs each decode in an OpenMP team that belongs to the calling thread. Once a
    second thread has decoded, the process holds more OpenMP threads than CPUs and libgomp
    stops spin-waiting between parallel regions, so every later decode in the process
    pays to wake its workers. Measured here (2 threads on 2 cores, a thread per model):
    after a second model had decoded, the tiny model's decode rate fell from ~6,500 to
    ~2,000 t/s and Gemma 3 270M's from ~48 to ~41 t/s, for the rest of the process.
    Engines with work take turns, a step (or a call) each."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._engines: list[Engine] = []
        self._thread: threading.Thread | None = None
        self._calls: deque[_Call] = deque()  # run_on_decode_thread()
        #: counts :meth:`notify` calls (work arrived for some engine): a steady loop that saw
        #: it change gives way; never reset, so no arrival is lost between rounds. A C int,
        #: so the compiled loop (:mod:`saiverse_llm.native_loop`) reads it between steps.
        self.knock = ctypes.c_int32(0)

    @property
    def seq(self) -> int:
        """The :meth:`notify` count (wraps at 2**31; only "it changed" is read)."""
        return self.knock.value

    def add(self, engine: Engine) -> None:
        """Serve ``engine`` (the thread starts with the first one). Lock order: an
        engine's lock, then this one; the thread never takes an engine's lock while it
        holds this one."""
        with self._cond:
            if engine not in self._engines:
                self._engines.append(engine)
            self._arrived()

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on this thread, between two engines' turns; its result or its error."""
        if self.on_thread():
            return fn()
        box: list[T] = []
        call = _Call(lambda: box.append(fn()), idle=False)
        with self._cond:
            self._calls.append(call)
            self._arrived()
        call.finished.wait()
        if call.error is not None:
            raise call.error
        return box[0]

    def _arrived(self) -> None:
        """Under the lock: work arrived; the thread runs (started once) and is woken."""
        self._start()
        self._knock()
        self._cond.notify()

    def _knock(self) -> None:
        knock = self.knock
        knock.value = (knock.value + 1) & 0x7FFFFFFF

    def _start(self) -> None:
        """Under the lock: the thread, started once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="saiverse-llm scheduler", daemon=True
            )
            self._thread.start()

    def notify(self, *, blocking: bool = True) -> None:
        """Work arrived. ``blocking=False`` (a finalizer, which may run anywhere, even on
        a thread that holds this lock) never waits for the lock: the flag is seen at the
        next round, or at the poll of an engine that has jobs."""
        self._knock()  # racing increments may merge; only "it changed" is read
        if self._cond.acquire(blocking=blocking):
            try:
                self._cond.notify()
            finally:
                self._cond.release()

    def on_thread(self) -> bool:
        return self._thread is not None and self._thread is threading.current_thread()

    def others_want(self, me: Engine) -> bool:
        """On the scheduler thread: another engine has work waiting or running (then each
        engine's steady loop gives way after every step, and they take turns)."""
        engines = self._engines
        if len(engines) < 2:
            return False
        return any(e is not me and e._wants() for e in engines)

    def _run(self) -> None:
        while True:
            seen = self.seq
            engines = list(self._engines)
            did = 0
            while self._calls:
                self._calls.popleft().run()
                did += 1
            for engine in engines:
                result = engine._tick(seen)
                if result is _CLOSED:
                    with self._cond:
                        self._engines.remove(engine)
                    engine._stopped.set()
                elif result:
                    did += 1
            if did:
                continue
            timeout = _min_timeout([e._deadline() for e in engines])  # each takes its lock
            with self._cond:
                if self.seq != seen:
                    continue
                self._cond.wait(timeout)


def run_on_decode_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on the thread that runs every decode of the loaded models, and its result
    (or its error). For code that decodes with a ``llama_cpp.Llama`` of its own (an
    embedding model, a benchmark's raw loop): with llama.cpp's OpenMP CPU backend, a
    second thread that decodes slows every decode of the process (see ``_Scheduler``)."""
    return _scheduler.run(fn)


def _min_timeout(timeouts: list[float | None]) -> float | None:
    found = [t for t in timeouts if t is not None]
    return min(found) if found else None


_scheduler = _Scheduler()


def _common_prefix(ids: np.ndarray[Any, Any], n: int, want: np.ndarray[Any, Any]) -> int:
    m = min(n, want.shape[0])
    if m <= 0:
        return 0
    differ = np.flatnonzero(ids[:m] != want[:m])
    return int(differ[0]) if differ.shape[0] else m
