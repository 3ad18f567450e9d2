"""Logging impressions off the request path, without losing one to a crash.

``ImpressionLog.log`` appends the record to this process's spool file (``<event db>.impressions/<pid>.jsonl``,
one ``write``, no fsync: a killed process loses nothing, the page cache keeps it) and queues it. A
background thread writes the queue to the event store's ``impressions`` table in batches (one durable
transaction each) and empties the spool file once everything in it is stored. A process that starts
stores the spool files of processes that died first (``request_id`` makes that idempotent). While the
store cannot write, records stay queued and spooled, and the next flush retries. Impressions older than
``retention_s`` are pruned by the same thread, at most once an hour.

Features that cost to compute (the ranker features of search and recommendations when no model needs them
to answer) may be given as
``later``: the flusher computes them just before storing, so the request does not wait for them. What they
read from the live models (item statistics, co-occurrence, transitions) is taken with the request, so that
they are the features of the list as served: read at flush time they would hold the shopper's own click on
the list, the very label the ranker learns. A process
killed before its flush loses those features of its last lists (the lists, items and positions survive).
Computing them holds the GIL (about 0.7 ms a list at 1M items), so a request thread coming back from
onnxruntime or FAISS would wait for it: given ``in_flight`` (the process's :class:`InFlight` requests), the flusher
computes them between requests, waiting up to ``IDLE_WAIT_S`` for a gap, and not at all once
``BACKLOG`` records are queued (a server that is never idle still stores everything).

**A writer process** (``spool_only``; what ``vitrine serve`` runs, see :mod:`engine.serving`): the serving
process then only appends to its spool, in segments (``<pid>.<stamp>.jsonl``, a new one every
``SEGMENT_S`` or ``SEGMENT_BYTES``), and each line carries its deferred features as a spec
(``later.spec()``: the inputs, item ids and packed floats) instead of a closure. :class:`SpoolWriter`, in its
own process with its own engine, reads every segment as it grows, computes the deferred features
(``Engine.deferred``), stores the impressions and deletes a segment once it is stored and sealed (a newer
one of its process exists, or the process is gone). No flusher thread, no feature computation and no
store write then take the serving process's GIL. The writer still shares the machine's cores, caches and
memory bandwidth with the requests, so it too works between them: each serving process mirrors its
:class:`InFlight` count into ``<pid>.busy`` (8 bytes, memory-mapped: no system call per request), and the
writer reads every such file before each record and each store write, waiting up to ``IDLE_WAIT_S`` for
none to be busy (not at all with more than ``BACKLOG`` records to go). It runs under Linux's ``SCHED_IDLE``
policy (:func:`lower_priority`), so a request that arrives while it computes gets a core at once. A serving
process counts a request in from its start until its response's last byte is written (``web``'s WSGI
wrapper), not only until the view returns.

Thread-safe; one log per process (``Engine`` makes it when the server asks for logging).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import mmap
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from engine.errors import StoreUnavailable
from engine.events import EventStore
from engine.events.impressions import Impression
from engine.process import process_alive

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.5
MAX_BATCH = 1000
PRUNE_EVERY_S = 3600.0
IDLE_WAIT_S = 0.05  # the longest a deferred computation waits for a gap between requests
BACKLOG = 250  # queued records beyond which the flusher stops waiting for gaps
GAP_POLL_S = 0.0005  # how often the writer process looks at the serving processes' busy files while it waits
WRITER_ENV = "VITRINE_IMPRESSION_WRITER_PID"  # set by `vitrine serve` for its workers: a writer process runs
WRITER_NICE = 10  # the writer process's niceness where Linux's SCHED_IDLE policy is not to be had (lower_priority)
SEGMENT_S = 60.0  # spool-only: a serving process starts a new spool segment this often (when it logs)...
SEGMENT_BYTES = 8 << 20  # ...or once its segment holds this much


class InFlight:
    """How many requests this process is answering now (the web app counts them in and out); ``wait_idle``
    blocks without polling (a polling thread would take the GIL from the requests every time it wakes)."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._shared: mmap.mmap | None = None

    def share(self, path: Path) -> None:
        """Mirror the count into ``path`` (8 bytes, little-endian, memory-mapped), where another process
        (:class:`SpoolWriter`) can read it; once per process."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # written, not only truncated: a page the file system has not allocated would be allocated by the
            # first store into the mapping, and on a full disk that kills the process (SIGBUS) instead of
            # raising ENOSPC here
            if os.pwrite(fd, bytes(8), 0) != 8:
                raise OSError(f"short write to {path}")
            shared = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        with self._lock:
            self._shared = shared
            self._mirror()

    def _mirror(self) -> None:  # under _lock
        if self._shared is not None:
            self._shared[:8] = self._n.to_bytes(8, "little")

    def enter(self) -> None:
        with self._lock:
            self._n += 1
            self._idle.clear()
            self._mirror()

    def exit(self) -> None:
        with self._lock:
            self._n = max(0, self._n - 1)
            self._mirror()
            if not self._n:
                self._idle.set()

    @property
    def shared(self) -> bool:
        return self._shared is not None

    def busy(self) -> bool:
        return self._n > 0

    def wait_idle(self, timeout: float) -> bool:
        """True as soon as no request is in flight, False after ``timeout`` seconds of requests."""
        return self._idle.wait(timeout)


def lower_priority() -> None:
    """Give this process (the impression writer) the CPU only when the requests leave it: Linux's
    ``SCHED_IDLE`` policy, else nice ``WRITER_NICE`` (logged).

    Why ``SCHED_IDLE`` and not a nice value: the scheduler treats a core that runs only ``SCHED_IDLE`` threads
    as idle, both when it places a thread that wakes and when it decides to preempt, so a request's thread
    takes the core at once. A nice value only weighs the shares: a woken thread may still wait for the
    writer's time slice. Measured at 1M items (``bench/bench_index_1m.py``; README, "Compressed indexes"):
    the time from the client's send to the request's start had a p99 of 4.2 to 5.0 ms with the writer at
    nice 10 or 19, 1.2 to 2.0 ms with ``SCHED_IDLE``, and 1.0 to 1.2 ms with logging off.

    A process cannot leave ``SCHED_IDLE`` without privileges. On a saturated machine the writer then falls
    behind, and catches up when the load eases. The impressions wait in the spool files meanwhile, where
    they are durable. At nice 10 it falls behind as well: 8 clients at 1M for 30 s (about 215 searches a
    second) left 93% of the lists unstored at the end with ``SCHED_IDLE`` and 85% at nice 10, and both had
    stored every list 5 s later."""
    try:
        # per thread on Linux: those already running (a BLAS library's, started at import), then this one
        # (every thread started later inherits it). This one last: once it is under SCHED_IDLE a busy machine
        # may not run it again for seconds, and the others must not wait for that at the normal policy.
        tasks = Path("/proc/self/task")
        others = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else []
        for tid in [t for t in others if t != threading.get_native_id()] + [0]:
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except ProcessLookupError:  # ended meanwhile
                pass
        log.info("impression writer: SCHED_IDLE")
    except (AttributeError, OSError) as e:  # not Linux, or refused
        log.info("impression writer: no SCHED_IDLE (%s); nice %d instead", e, WRITER_NICE)
        os.nice(WRITER_NICE)


def spool_dir(store: EventStore) -> Path:
    """Where the spool files of ``store`` live: beside its database file."""
    return Path(f"{store.path}.impressions")


class ImpressionLog:
    def __init__(self, store: Callable[[], EventStore], *, retention_s: float,
                 flush_every_s: float = FLUSH_EVERY_S, in_flight: InFlight | None = None,
                 spool_only: bool = False) -> None:
        """``spool_only``: a :class:`SpoolWriter` process stores this process's spool (see the module)."""
        self._store = store
        self.spool_only = spool_only
        self._segment_at = 0.0
        self._segment_bytes = 0
        self._in_flight = in_flight
        self.retention_s = retention_s
        self.flush_every_s = flush_every_s
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: two would store, then pop, the same records
        self._wake = threading.Event()
        self._queue: deque[tuple[Impression, Later]] = deque()
        self._fd = -1
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        self._closed = False

    def log(self, imp: Impression, later: Later = None) -> None:
        """Spool and queue ``imp``; never raises (a failure is logged: the answer matters more). ``later()``
        gives more features per shown item, merged into ``imp.features`` by the flusher."""
        try:
            if self.spool_only:
                self._spool(imp, later)
                return
            line = (imp.to_json() + "\n").encode("utf-8")
            with self._lock:
                self._start()
                os.write(self._fd, line)
                self._queue.append((imp, later))
        except (OSError, ValueError) as e:
            log.warning("impression %s not logged: %s", imp.request_id, e)

    def _spool(self, imp: Impression, later: Later) -> None:
        """Spool-only: append ``imp`` (with its deferred features' spec) to this process's current segment."""
        spec = None
        if later is not None:
            try:
                spec = later.spec()  # type: ignore[attr-defined]
            except (AttributeError, ValueError):  # cannot be computed elsewhere: compute it here
                imp = _complete(imp, later)
        line = (imp.to_json() if spec is None else imp.to_json(deferred=spec)).encode("utf-8") + b"\n"
        with self._lock:
            now = time.monotonic()
            if (self._pid != os.getpid() or self._fd < 0 or now - self._segment_at >= SEGMENT_S
                    or self._segment_bytes >= SEGMENT_BYTES):
                self._new_segment(now)
            os.write(self._fd, line)
            self._segment_bytes += len(line)

    def _new_segment(self, now: float) -> None:
        """Spool-only: start a new segment file (the writer deletes the previous one once it is stored)."""
        folder = spool_dir(self._store())
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{os.getpid()}.{time.time_ns()}.jsonl",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._pid, self._fd, self._segment_at, self._segment_bytes = os.getpid(), fd, now, 0
        if self._in_flight is not None and not self._in_flight.shared:  # the writer waits for gaps
            try:
                self._in_flight.share(folder / f"{os.getpid()}.busy")
            except OSError as e:  # a full or read-only disk: the writer just does not wait for this process
                log.warning("in-flight requests not shared with the impression writer: %s", e)

    def _start(self) -> None:
        """Open this process's spool file and start the flusher (once per process; under ``_lock``)."""
        if self._pid == os.getpid() and self._fd >= 0:
            return
        self._pid, self._queue = os.getpid(), deque()
        folder = spool_dir(self._store())
        folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(folder / f"{self._pid}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._recover()
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
                self._prune()
            except Exception:  # the flusher must outlive any one failure
                log.exception("impression flush failed; retrying")

    def _writer_pid(self) -> int | None:
        """Spool-only: the writer process that `vitrine serve` started for this process (None: none known)."""
        pid = os.environ.get(WRITER_ENV, "")
        return int(pid) if self.spool_only and pid.isdigit() else None

    def writer_warming(self) -> bool:
        """Spool-only: the writer process runs but has not loaded the served version yet (it then competes
        with the requests for the CPU; ``GET /v1/info`` lists it under ``warming``)."""
        pid = self._writer_pid()
        if pid is None or not process_alive(pid):
            return False
        try:
            return not (spool_dir(self._store()) / f"writer-{pid}.ready").exists()
        except StoreUnavailable:
            return False

    def status(self) -> dict[str, Any]:
        """For the admin: how this process's impressions reach the store, and what waits in its spool
        (``writer_alive`` False with growing ``spooled_bytes``: the writer process is gone; restart the server)."""
        out: dict[str, Any] = {"writer": "process" if self.spool_only else "thread"}
        if self.spool_only:
            pid = self._writer_pid()
            out["writer_alive"] = pid is not None and process_alive(pid)
            try:
                out["spooled_bytes"] = sum(p.stat().st_size for p in spool_dir(self._store()).glob("*.jsonl"))
            except (OSError, StoreUnavailable):
                out["spooled_bytes"] = None
        else:
            out["queued"] = len(self._queue)
        return out

    def flush(self) -> int:
        """Store every queued impression now; returns how many were written (0 while the store cannot, and
        always 0 spool-only: the writer process stores them)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        written = 0
        while True:
            with self._lock:
                queued = [self._queue[i] for i in range(min(MAX_BATCH, len(self._queue)))]
            if not queued:
                return written
            batch = []
            for imp, later in queued:
                if later is not None:
                    self._wait_for_a_gap()
                batch.append(_complete(imp, later))
                # Hand the GIL to a request thread that waits for it: otherwise a request coming back from
                # onnxruntime or FAISS waits up to the 5 ms switch interval, again and again, while these
                # features are computed (at 1M items, search p99 30 ms with the log against 9 ms without).
                time.sleep(0)
            try:
                self._store().add_impressions(batch)
            except StoreUnavailable as e:
                log.warning("impressions kept in the spool until the store can write: %s", e)
                return written
            with self._lock:
                for _ in batch:
                    self._queue.popleft()
                if not self._queue and self._fd >= 0:
                    os.ftruncate(self._fd, 0)  # everything spooled so far is stored
            written += len(batch)

    def _wait_for_a_gap(self) -> None:
        """Return when no request is in flight, after ``IDLE_WAIT_S``, or at once with a backlog."""
        if self._in_flight is None or self._closed or len(self._queue) >= BACKLOG:
            return
        self._in_flight.wait_idle(IDLE_WAIT_S)

    def _recover(self) -> None:
        """Store the spool files of processes that are gone, then delete them."""
        folder = spool_dir(self._store())
        for path in folder.glob("*.jsonl"):
            if not path.stem.isdigit() or int(path.stem) == os.getpid() or process_alive(int(path.stem)):
                continue
            try:
                with path.open("rb") as fh:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    rows = [Impression.from_json(line) for line in fh.read().decode("utf-8").splitlines()
                            if line.strip()]
                    for i in range(0, len(rows), MAX_BATCH):
                        self._store().add_impressions(rows[i:i + MAX_BATCH])
                    path.unlink()
                log.info("stored %d impressions spooled by process %s", len(rows), path.stem)
            except (BlockingIOError, FileNotFoundError):
                continue  # another process is storing it
            except (StoreUnavailable, OSError, ValueError, KeyError) as e:
                log.warning("spool %s not recovered yet: %s", path, e)

    def _prune(self) -> None:
        self._pruned_at = prune(self._store, self.retention_s, self._pruned_at)

    def close(self) -> None:
        """Flush what is queued and stop the flusher."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()


Later = Optional[Callable[[], list[dict[str, float]]]]


def prune(store: Callable[[], EventStore], retention_s: float, pruned_at: float) -> float:
    """Delete the impressions older than ``retention_s``, at most once every ``PRUNE_EVERY_S`` (since
    ``pruned_at``); returns when it last pruned."""
    now = time.time()
    if now - pruned_at < PRUNE_EVERY_S:
        return pruned_at
    try:
        store().prune_impressions(now - retention_s)
    except StoreUnavailable as e:
        log.warning("impressions not pruned: %s", e)
    return now


def mark_writer_ready(store: EventStore) -> Path:
    """The writer process has loaded the served version: spool-only workers stop listing it as warming."""
    folder = spool_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"writer-{os.getpid()}.ready"
    path.touch()
    return path


class SpoolWriter:
    """Stores what spool-only serving processes spooled (see the module), computing their deferred features
    with ``deferred(spec)`` (``Engine.deferred``). Run it in a process of its own (``vitrine impressions
    writer``, started by ``vitrine serve``): :meth:`run` until ``stop`` is set. A segment is processed by one
    writer at a time (an exclusive ``flock``); stored lines are skipped on a rerun by ``request_id``, so a
    writer killed mid-segment loses nothing and stores nothing twice."""

    def __init__(self, store: Callable[[], EventStore], deferred: Callable[[dict[str, Any]], Callable[[], list[dict[str, float]]]],
                 *, retention_s: float, every_s: float = FLUSH_EVERY_S,
                 before_pass: Callable[[], None] | None = None) -> None:
        """``before_pass``: called before each pass that has lines to store (``Engine.refresh_live``)."""
        self._store = store
        self._before_pass = before_pass
        self._deferred = deferred
        self.retention_s = retention_s
        self.every_s = every_s
        self._done: dict[str, int] = {}  # segment name -> bytes stored
        self._pruned_at = 0.0
        self._refreshed = False
        self.gap_wait_s = IDLE_WAIT_S  # the longest wait for a gap between requests, per record
        self._busy: dict[Path, mmap.mmap] = {}  # the serving processes' in-flight counts (InFlight.share)

    def run(self, stop: threading.Event, alive: Callable[[], bool] = lambda: True) -> None:
        """Pass over the spool every ``every_s`` until ``stop`` is set or ``alive()`` turns False (the
        server that started this writer is gone), then once more."""
        while not stop.is_set() and alive():
            try:
                self.write()
                self._prune()
            except Exception:  # the writer must outlive any one failure
                log.exception("impression writer pass failed; retrying")
            stop.wait(self.every_s)
        self.write()

    def write(self) -> int:
        """One pass: store every complete line not stored yet; delete the segments done with. Returns the
        number of impressions stored (0 while the store cannot write: they stay spooled)."""
        folder = spool_dir(self._store())
        if not folder.is_dir():
            return 0
        segments: dict[int, list[tuple[int, Path]]] = {}
        for path in folder.glob("*.jsonl"):
            parts = path.stem.split(".")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                segments.setdefault(int(parts[0]), []).append((int(parts[1]), path))
            elif len(parts) == 1 and parts[0].isdigit() and not process_alive(int(parts[0])):
                segments.setdefault(int(parts[0]), []).append((-1, path))  # a dead flusher's spool (no segments)
        written = 0
        self._refreshed = False
        self._watch_busy(folder)
        for pid, segs in segments.items():
            segs.sort()
            gone = not process_alive(pid)
            for i, (_, path) in enumerate(segs):
                try:
                    written += self._segment(path, sealed=gone or i < len(segs) - 1)
                except StoreUnavailable as e:
                    log.warning("impressions kept in the spool until the store can write: %s", e)
                    return written
        live = {p.name for segs in segments.values() for _, p in segs}
        self._done = {k: v for k, v in self._done.items() if k in live}
        for ready in folder.glob("writer-*.ready"):  # left by a writer killed with -9
            owner = ready.stem.removeprefix("writer-")
            if owner.isdigit() and not process_alive(int(owner)):
                ready.unlink(missing_ok=True)
        return written

    def _segment(self, path: Path, *, sealed: bool) -> int:
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            return 0
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another writer has it
            start = self._done.get(path.name, 0)
            fh.seek(start)
            data = fh.read()
            end = data.rfind(b"\n") + 1  # complete lines only: the process may be writing the next one
            written = 0
            if end:
                if self._before_pass is not None and not self._refreshed:
                    self._before_pass()
                    self._refreshed = True
                rows = []
                lines = [x for x in data[:end].decode("utf-8").splitlines() if x.strip()]
                for n, line in enumerate(lines):
                    self.wait_for_a_gap(to_go=len(lines) - n)
                    rows.append(self._record(line))
                for i in range(0, len(rows), MAX_BATCH):
                    self.wait_for_a_gap()
                    written += self._store().add_impressions([r for r in rows[i:i + MAX_BATCH] if r is not None])
                self._done[path.name] = start + end
            if sealed and start + end == os.fstat(fh.fileno()).st_size:
                path.unlink()
                self._done.pop(path.name, None)
            return written

    def _watch_busy(self, folder: Path) -> None:
        """Map the live serving processes' ``<pid>.busy`` files; forget (and delete) those of dead ones."""
        for path in list(self._busy):
            owner = path.stem
            if not path.exists() or not process_alive(int(owner)):
                self._busy.pop(path).close()
                path.unlink(missing_ok=True)
        for path in folder.glob("*.busy"):
            if path in self._busy or not path.stem.isdigit():
                continue
            if not process_alive(int(path.stem)):
                path.unlink(missing_ok=True)
                continue
            try:
                with path.open("rb") as fh:
                    self._busy[path] = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # not written yet (size 0): next pass
                continue

    def busy(self) -> bool:
        """Whether a serving process is answering a request now."""
        return any(m[:8] != b"\0" * 8 for m in self._busy.values())

    def wait_for_a_gap(self, to_go: int = 0) -> bool:
        """Wait until no serving process is answering a request, at most ``gap_wait_s`` (and not at all with
        more than ``BACKLOG`` records ``to_go`` in this pass). True when there is a gap."""
        if not self._busy or to_go > BACKLOG:
            return not self.busy()
        deadline = time.monotonic() + self.gap_wait_s
        while self.busy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(GAP_POLL_S)
        return True

    def _record(self, line: str) -> Impression | None:
        try:
            d = json.loads(line)
            imp = Impression.from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("a spooled impression cannot be read, skipped: %s", e)
            return None
        spec = d.get("deferred")
        if spec is None:
            return imp
        try:
            later = self._deferred(spec)
        except Exception as e:  # an item gone from the catalog, a malformed spec: the list survives
            log.warning("impression %s stored without its deferred features: %s", imp.request_id, e)
            return imp
        return _complete(imp, later)

    def _prune(self) -> None:
        self._pruned_at = prune(self._store, self.retention_s, self._pruned_at)


def _complete(imp: Impression, later: Later) -> Impression:
    """``imp`` with the ``later`` features merged into each shown item's (as it was if they cannot be had)."""
    if later is None:
        return imp
    try:
        extra = later()
    except Exception:  # a feature failure must not lose the impression
        log.exception("impression %s stored without its deferred features", imp.request_id)
        return imp
    if len(extra) != len(imp.items):
        return imp
    base = imp.features or [{} for _ in imp.items]
    return dataclasses.replace(imp, features=[{**b, **e} for b, e in zip(base, extra)])
