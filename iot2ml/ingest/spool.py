"""A write-ahead spool in front of the lake: readings are acknowledged once fsynced, landed as Parquet in batches.

Used by the HTTP service and the MQTT ingester. A hand-written module (dense mechanism), not exported from a notebook.

Design
------
Folder. The spool is a folder of segment files `seg-<seq:012d>.wal` plus a `.lock` file (an exclusive
`flock`, so two writers never share a folder). A segment is a sequence of records
`[u32 length][u32 crc32][payload]` (little-endian), the payload being an Arrow IPC stream of one table
in `RAW_SCHEMA` (an appended table without `arrival_ts` gets the time of `append`, so a replay lands
the same bytes).

Group commit. One committer thread owns the open segment. `append` serialises the table and computes
its crc in the caller's thread, then enqueues `(record, future)`. The committer takes everything
pending, writes it with one `write`, calls `os.fdatasync` once, calls `on_commit` once with the
readings of that group, and only then resolves the futures: concurrent producers share one fsync, and
an acknowledged reading is on disk (and, via the hook, visible in the latest-state store). If the write
or fsync fails, that group's futures get the error and the file is truncated back to its last good
offset, so no later record sits behind garbage.

Segment == lake batch. Sealing a segment closes it and opens the next (`seq + 1`); a flusher thread
lands the sealed segment as ONE lake batch with the id `f"{writer_id}-{seq:012d}"`, from the tables
kept in memory (no re-read), then deletes the file. At most one segment is being landed while the next
fills: while the flusher is busy the open segment keeps growing, so batches get bigger under load
instead of queueing up. `Lake.land` is idempotent by batch id, so:
  - crash before landing: the segment is still there and `start` replays it;
  - crash after landing, before the delete: the replay lands the same id again, which the lake skips;
  - crash mid-landing: Parquet files are written atomically under names derived from the batch id,
    so the replay rewrites the same files and then writes the marker.
A record that was written but not yet fsynced when the process died may still be replayed (it is in
the page cache); it was never acknowledged, so a client retry can duplicate it: the processed tier
deduplicates `(device, sensor, ts)`.

Sequence numbers never go back: the open segment file always exists (`close` leaves it, empty, as the
high-water mark), and a spool folder with no segment at all takes the highest id of this writer from
the lake's batch markers, so a new batch can never reuse (and be skipped as) an id already landed.

Replay (`start`). Every leftover segment, oldest first, is read record by record; a record whose
length or crc does not check (a torn write at the tail of the last segment) ends that segment: the
good prefix is landed, the bad tail truncated away (for an older, sealed segment, which should never
be torn, the tail is kept beside it as `.corrupt` and a warning logged). No exception.

Flush triggers. The open segment is sealed when it holds `flush_rows` rows or `flush_bytes` bytes,
when its oldest record is `flush_seconds` old (the committer's wait timeout is the timer), on
`flush()` and on `close()`; the size and age triggers wait for the flusher to be free.

Backpressure. `depth_bytes` counts the bytes accepted and not yet in the lake (queued, open segment,
segment being landed). If accepting a table would take it past `max_bytes`, `append` raises `SpoolFull`
with `retry_after`, an estimate in seconds from the recent landing rate. (A table alone larger than
`max_bytes` is accepted when the spool is empty, so it cannot be refused forever.)

Landing errors. If `Lake.land` fails, the segment stays sealed and in the spool; the flusher retries
with backoff (0.5 s doubling to 30 s), `flush()`/`close()` raise the error instead of waiting, and
backpressure eventually stops producers. Memory: the tables of unlanded segments are kept in memory,
so `max_bytes` also bounds memory (Arrow in memory is about the size of the IPC bytes).

Record sequence numbers. `append` resolves to `seq = segment << 32 | index`, increasing over the
writer's whole life (across restarts too); `SpooledWriter.batch_id(seq)` is the lake batch it lands in.
"""
from __future__ import annotations
import asyncio, concurrent.futures, fcntl, logging, os, re, struct, threading, time, zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd, pyarrow as pa

from iot2ml._io import fsync_dir
from iot2ml.config import private
from iot2ml.errors import ConfigError, StateError
from iot2ml.lake.store import Lake, as_raw
from iot2ml.schema import RAW_SCHEMA

__all__ = ['SpoolError', 'SpoolFull', 'SpooledWriter', 'read_segment']

log = logging.getLogger('iot2ml.ingest.spool')
_HDR = struct.Struct('<II')
_SEG_RE = re.compile(r'^seg-(\d{12})\.wal$')
_ID_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._\-]{0,100}')

class SpoolError(StateError, RuntimeError):
    "The spool folder is in use by another writer, or the spool failed and accepts nothing more."

class SpoolFull(StateError, RuntimeError):
    "The spool holds more unlanded bytes than its limit; retry after `retry_after` seconds."
    def __init__(self, depth_bytes:int, max_bytes:int, retry_after:float):
        self.depth_bytes, self.max_bytes, self.retry_after = depth_bytes, max_bytes, retry_after
        super().__init__(f"the ingest spool is full ({depth_bytes:,} of {max_bytes:,} bytes not yet in the lake); "
                         f"retry in {retry_after:.1f} s")

def _seg_name(seq:int) -> str: return f'seg-{seq:012d}.wal'


def _encode(table:pa.Table) -> tuple[bytes, pa.Buffer]:
    "One spool record: (header, Arrow IPC stream of `table`)."
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w: w.write_table(table)
    payload = sink.getvalue()
    return _HDR.pack(payload.size, zlib.crc32(payload)), payload

def read_segment(path:Path|str) -> tuple[list[pa.Table], int, int]:
    "The tables of the good records of a segment, the byte length of that good prefix, and the file size."
    data = Path(path).read_bytes()
    tables, off = [], 0
    while off + _HDR.size <= len(data):
        n, crc = _HDR.unpack_from(data, off)
        end = off + _HDR.size + n
        if n == 0 or end > len(data): break
        payload = memoryview(data)[off + _HDR.size:end]
        if zlib.crc32(payload) != crc: break
        try: tables.append(pa.ipc.open_stream(pa.py_buffer(payload)).read_all())
        except pa.ArrowException: break
        off = end
    return tables, off, len(data)

@dataclass
class _Segment:
    seq: int
    fd: int|None = None
    tables: list = field(default_factory=list)
    rows: int = 0
    bytes: int = 0       # bytes of records in the file
    records: int = 0
    first: float|None = None   # monotonic time of the first record's append

@dataclass
class _Item:
    record: tuple
    table: pa.Table|None
    future: concurrent.futures.Future
    t: float   # table None: a flush marker

_METRICS = dict(appended_rows=0, appended_bytes=0, appended_records=0, committed_rows=0, depth_rows=0, depth_bytes=0,
                flushes=0, flushed_rows=0, last_flush_seconds=None, last_flush_rows=0, last_flush_lag=None,
                last_batch_id=None, fsyncs=0, spool_full=0, replayed_batches=0, replayed_rows=0,
                hook_errors=0, land_errors=0, last_error=None)

class SpooledWriter:
    "Durable, group-committed appends of reading batches, landed in the lake in batches by rows, bytes or seconds."
    def __init__(self, lake:Lake, folder:Path|str, writer_id:str='ingest-0', dataset:str='telemetry',
                 flush_rows:int=500_000, flush_bytes:int=256 << 20, flush_seconds:float=5.0,
                 max_bytes:int=1 << 30, on_commit:Callable[[pa.Table], None]|None=None,
                 on_flush:Callable[[dict], None]|None=None):
        if not _ID_RE.fullmatch(writer_id or ''):
            raise ConfigError(f"writer id {writer_id!r} is not valid; "
                              "use letters, digits, '.', '_' or '-' (at most 101)")
        if min(flush_rows, flush_bytes, max_bytes) <= 0 or flush_seconds <= 0:
            raise ConfigError("flush_rows, flush_bytes, flush_seconds and max_bytes must be positive")
        self.lake, self.folder, self.writer_id, self.dataset = lake, Path(folder), writer_id, dataset
        self.flush_rows, self.flush_bytes, self.flush_seconds = flush_rows, flush_bytes, flush_seconds
        self.max_bytes, self.on_commit, self.on_flush = max_bytes, on_commit, on_flush
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._flush_waiters: list[tuple[int, concurrent.futures.Future]] = []
        self._cur: _Segment|None = None
        self._sealed: _Segment|None = None
        self._landed_through = 0
        self._state = 'new'
        self._broken: BaseException|None = None
        self._lock_file = None
        self._threads: list[threading.Thread] = []
        self._rate = None   # landing rate, bytes/s (EWMA)
        self._m = dict(_METRICS)

    def __repr__(self): return f"SpooledWriter({str(self.folder)!r}, writer_id={self.writer_id!r}, {self._state})"
    def __enter__(self): return self if self._state == 'running' else self.start()
    def __exit__(self, *exc): self.close()

    def batch_id(self, seq:int) -> str:
        "The lake batch id of segment `seq`, or of the segment holding record `seq` (as `append` returns it)."
        return f"{self.writer_id}-{(seq >> 32 if seq >= 1 << 32 else seq):012d}"

    @property
    def stats(self) -> dict:
        "Metrics: appended rows/bytes/records, depth (not yet in the lake), flushes, last flush latency and lag, ..."
        with self._cond:
            return dict(self._m, segment=self._cur.seq if self._cur else None, landing=self._sealed is not None)

    def _failed(self, cause, more:str='') -> SpoolError:
        "The error for a spool that failed with `cause` (an exception, or its repr)."
        return SpoolError(f"the spool at {self.folder} failed: {cause}{more}")

    # ---------------------------------------------------------------- start: lock, replay, threads
    def start(self) -> SpooledWriter:
        "Lock the folder, land every leftover segment (oldest first), open a new segment and start the threads."
        if self._state != 'new': raise RuntimeError(f"{self!r} was already started; make a new SpooledWriter")
        private(self.folder)   # acknowledged readings: 0750, segments 0640
        self._take_lock()
        try: self._replay_all()
        except BaseException:
            self._release()
            raise
        self._state = 'running'
        self._threads = [self._thread(self._commit_loop, 'commit'), self._thread(self._flush_loop, 'flush')]
        for t in self._threads: t.start()
        return self

    def _take_lock(self):
        "Hold the folder's `.lock` (an exclusive flock), or raise `SpoolError` if another writer holds it."
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._lock_file = os.fdopen(os.open(self.folder/'.lock', flags, 0o640), 'a+')
        try: fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise SpoolError(f"the spool {self.folder} is in use by another writer (its .lock is held); "
                             "give each ingester its own spool folder and writer_id") from None

    def _replay_all(self):
        "Open the next segment (first, so the high-water mark survives a crash during replay), then land the leftovers."
        leftovers = self._segments()
        seq = (max(leftovers) if leftovers else self._last_landed_seq()) + 1
        self._cur = self._open_segment(seq)
        sizes = {s: (self.folder/_seg_name(s)).stat().st_size for s in leftovers}
        for s in leftovers:   # the tail that may be torn: the last segment with any bytes (empty ones: a failed start)
            self._replay(s, last=not any(sizes[t] for t in leftovers if t > s))
        self._landed_through = seq - 1

    def _thread(self, loop:Callable, name:str) -> threading.Thread:
        return threading.Thread(target=self._guard, args=(loop,), name=f'spool-{name}-{self.writer_id}', daemon=True)

    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _SEG_RE.match(p.name)))

    def _last_landed_seq(self) -> int:
        "Highest segment seq of this writer that has a batch marker in the lake (for a spool folder with no segment)."
        marks = self.lake.path('raw', self.dataset)/'_batches'
        pre, best = f'{self.writer_id}-', 0
        if marks.exists():
            for p in marks.glob(f'{self.writer_id}-*.json'):
                tail = p.stem[len(pre):]
                if len(tail) == 12 and tail.isdigit(): best = max(best, int(tail))
        return best

    def _open_segment(self, seq:int) -> _Segment:
        fd = os.open(self.folder/_seg_name(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fsync_dir(self.folder)
        return _Segment(seq, fd)

    def _replay(self, seq:int, last:bool):
        "Land the good records of leftover segment `seq` as its batch, then delete it."
        path = self.folder/_seg_name(seq)
        tables, good, size = read_segment(path)
        if good < size: self._cut_tail(path, good, size, len(tables), last)
        rows = sum(t.num_rows for t in tables)
        if rows:
            t0 = time.perf_counter()
            r = self.lake.land(self._concat(tables), self.batch_id(seq), self.dataset)
            info = dict(batch_id=r.batch_id, seq=seq, rows=rows, bytes=good, seconds=time.perf_counter() - t0,
                        lag=None, files=len(r.files), skipped=r.skipped, replay=True)
            self._m['replayed_batches'] += 1
            self._m['replayed_rows'] += rows
            self._hook(self.on_flush, info)
        path.unlink()

    def _cut_tail(self, path:Path, good:int, size:int, records:int, last:bool):
        "Truncate a segment to its `good` prefix; a bad tail of a sealed (not `last`) segment is kept as `.corrupt`."
        if last:
            log.info("spool %s: dropping a torn tail of %d bytes (an append that was never acknowledged)",
                     path, size - good)
        else:
            log.warning("spool %s: %d bytes after offset %d do not check (crc/length); the good %d records are "
                        "landed, the rest kept in %s.corrupt", path, size - good, good, records, path.name)
            with open(path, 'rb') as f:
                f.seek(good)
                (self.folder/f'{path.name}.corrupt').write_bytes(f.read())
        with open(path, 'r+b') as f:
            f.truncate(good)
            os.fsync(f.fileno())

    @staticmethod
    def _concat(tables:list[pa.Table]) -> pa.Table:
        t = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return t.combine_chunks() if t.column(0).num_chunks > 64 else t

    # ---------------------------------------------------------------- append
    def append(self, table:pa.Table) -> concurrent.futures.Future:
        """Spool `table` (long form, validated); the future resolves to the record's seq once it is fsynced.
        Raises `SpoolFull` (nothing accepted) when the spool is over `max_bytes`."""
        if not isinstance(table, pa.Table): raise TypeError(f"append takes a pyarrow Table, not {type(table).__name__}")
        if not table.schema.equals(RAW_SCHEMA): table = as_raw(table, pd.Timestamp.now(tz='UTC'))
        elif table.schema.metadata: table = table.replace_schema_metadata(None)
        record = _encode(table)
        fut = concurrent.futures.Future()
        with self._cond:
            self._check_accepting()
            self._admit(table, record, fut)
        return fut

    def _check_accepting(self):
        "(Under the lock.) Raise unless the writer is running and has not failed."
        if self._state != 'running':
            hint = "; call start() first" if self._state == 'new' else ''
            raise RuntimeError(f"{self!r} is not accepting readings{hint}")
        if self._broken is not None: raise self._failed(self._broken) from self._broken

    def _admit(self, table:pa.Table, record:tuple, fut:concurrent.futures.Future):
        "(Under the lock.) Count and queue a record; `SpoolFull` if it would take the spool past `max_bytes`."
        m, n = self._m, _HDR.size + record[1].size
        depth = m['depth_bytes']
        if depth and depth + n > self.max_bytes:
            m['spool_full'] += 1
            raise SpoolFull(depth, self.max_bytes, self._retry_after(depth + n - self.max_bytes))
        m['appended_rows'] += table.num_rows
        m['appended_bytes'] += n
        m['appended_records'] += 1
        m['depth_rows'] += table.num_rows
        m['depth_bytes'] += n
        self._pending.append(_Item(record, table, fut, time.monotonic()))
        if len(self._pending) == 1: self._cond.notify_all()

    async def append_async(self, table:pa.Table) -> int:
        "`append` for asyncio callers: awaits durability without blocking the event loop; returns the record's seq."
        return await asyncio.wrap_future(self.append(table))

    def _retry_after(self, excess:int) -> float:
        rate = self._rate or max(self.flush_bytes / max(self.flush_seconds, 1.0), 1 << 20)
        return round(min(max(excess / rate, 0.05), 60.0), 3)

    # ---------------------------------------------------------------- flush / close
    def flush(self) -> None:
        "Land everything accepted before this call; blocks until it is in the lake (raises if landing fails)."
        with self._cond:
            if self._state != 'running': return
            if self._broken is not None: raise self._failed(self._broken) from self._broken
            fut = concurrent.futures.Future()
            self._pending.append(_Item((), None, fut, 0.0))   # a marker: all records queued before it are in its target
            self._cond.notify_all()
        fut.result()

    def close(self) -> None:
        "Stop accepting, land everything, stop the threads; the spool folder keeps only the empty high-water segment."
        with self._cond:
            if self._state in ('closed', 'new'):
                self._state = 'closed'
                self._release()
                return
            self._state = 'closing'
            fut = concurrent.futures.Future()
            if self._broken is None:
                self._pending.append(_Item((), None, fut, 0.0))
                self._cond.notify_all()
            else:
                replay = "; what was acknowledged is replayed at the next start"
                fut.set_exception(self._failed(repr(self._broken), replay))
        try: fut.result()
        finally:
            with self._cond:
                self._state = 'closed'
                self._cond.notify_all()
            for t in self._threads: t.join()
            self._release()

    def _release(self):
        if self._cur is not None and self._cur.fd is not None:
            os.close(self._cur.fd)
            self._cur.fd = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ---------------------------------------------------------------- committer thread
    def _seal_due(self, now:float) -> bool:
        c = self._cur
        if self._sealed is not None or not c.records: return False
        return (c.rows >= self.flush_rows or c.bytes >= self.flush_bytes or now - c.first >= self.flush_seconds
                or any(t >= c.seq for t, _ in self._flush_waiters))

    def _commit_loop(self):
        while True:
            group = self._next_group()
            if group is None: return
            items = [i for i in group if i.table is not None]
            if items: self._commit(items)
            with self._cond:
                c = self._cur
                self._place_markers(group, c)
                seal = self._seal_due(time.monotonic())
                if seal: self._sealed = c
            if seal: self._rotate(c)

    def _next_group(self) -> list[_Item]|None:
        "Wait for pending items or a due seal and take the pending ones; None once closed (flush waiters then fail)."
        with self._cond:
            while True:
                now = time.monotonic()
                if self._pending or self._seal_due(now): break
                if self._state == 'closed':
                    left = [f for _, f in self._flush_waiters]
                    self._flush_waiters = []
                    for f in left: f.set_exception(RuntimeError("the writer was closed before this flush landed"))
                    return None
                c = self._cur
                timeout = (c.first + self.flush_seconds - now) if c.records and self._sealed is None else None
                self._cond.wait(timeout)
            group, self._pending = self._pending, []
            return group

    def _place_markers(self, group:list[_Item], c:_Segment):
        "(Under the lock.) Each flush marker of `group` waits for the segment holding what came before it, if unlanded."
        for i in group:
            if i.table is None:   # a flush marker: everything before it is in the open segment (or earlier)
                target = c.seq if c.records else c.seq - 1
                if target <= self._landed_through: i.future.set_result(None)
                else: self._flush_waiters.append((target, i.future))

    def _commit(self, items:list[_Item]):
        "Write `items` to the open segment with one write and one fdatasync, then resolve their futures."
        c = self._cur
        data = b''.join(part for i in items for part in i.record)
        try:
            if self._broken is not None: raise self._failed(repr(self._broken))
            view = memoryview(data)
            while view: view = view[os.write(c.fd, view):]
            os.fdatasync(c.fd)
        except (OSError, RuntimeError) as e:
            return self._commit_failed(items, c, len(data), e)
        rows = sum(i.table.num_rows for i in items)
        with self._cond:
            base = c.records
            if not c.records: c.first = items[0].t
            c.tables.extend(i.table for i in items)
            c.rows += rows
            c.bytes += len(data)
            c.records += len(items)
            self._m['fsyncs'] += 1
            self._m['committed_rows'] += rows
        if self.on_commit is not None:
            self._hook(self.on_commit, items[0].table if len(items) == 1 else pa.concat_tables(i.table for i in items))
        for k, i in enumerate(items): i.future.set_result(c.seq << 32 | (base + k))

    def _commit_failed(self, items:list[_Item], c:_Segment, size:int, e:Exception):
        "Truncate the segment back to its last good offset (or refuse further appends) and fail the group's futures."
        log.error("spool %s: write/fsync of %d records failed: %s", self.folder, len(items), e)
        try:
            if self._broken is None: os.ftruncate(c.fd, c.bytes)
        except OSError as e2:
            with self._cond: self._broken = e2
            log.critical("spool %s: cannot truncate back after a failed write (%s); refusing further appends",
                         self.folder, e2)
        with self._cond:
            self._m['depth_rows'] -= sum(i.table.num_rows for i in items)
            self._m['depth_bytes'] -= size
            self._m['last_error'] = repr(e)
        for i in items: i.future.set_exception(e)

    def _rotate(self, c:_Segment):
        "Close the sealed segment `c` (already fsynced) and open the next; the flusher lands `c`."
        try: nxt = self._open_segment(c.seq + 1)
        except OSError as e:
            log.critical("spool %s: cannot open segment %d (%s); refusing further appends", self.folder, c.seq + 1, e)
            with self._cond:
                self._broken = e
                self._sealed = None
                waiters, self._flush_waiters = [f for _, f in self._flush_waiters], []
            for f in waiters: f.set_exception(self._failed(repr(e)))
            return
        os.close(c.fd)
        c.fd = None
        with self._cond:
            self._cur = nxt
            self._cond.notify_all()

    # ---------------------------------------------------------------- flusher thread
    def _flush_loop(self):
        backoff = 0.5
        while True:
            seg = self._next_sealed()
            if seg is None: return
            t0 = time.perf_counter()
            try:
                r = self.lake.land(self._concat(seg.tables), self.batch_id(seg.seq), self.dataset) if seg.rows else None
                (self.folder/_seg_name(seg.seq)).unlink()
            except Exception as e:
                if not self._land_failed(seg, e, backoff): return
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            self._landed(seg, r, time.perf_counter() - t0)

    def _next_sealed(self) -> _Segment|None:
        "Wait for a sealed segment whose rotation is done; None when closed with nothing (landable) left."
        with self._cond:
            while self._sealed is None or self._sealed.fd is not None:   # fd closed == rotation done
                if self._state == 'closed' and (self._sealed is None or self._broken is not None): return None
                self._cond.wait(0.5)
            return self._sealed

    def _land_failed(self, seg:_Segment, e:Exception, backoff:float) -> bool:
        "Count a failed landing, fail the flush waiters, wait `backoff` s; False if the writer was closed meanwhile."
        log.error("spool %s: landing batch %s failed (%s); it stays in the spool, retrying in %.1f s",
                  self.folder, self.batch_id(seg.seq), e, backoff)
        with self._cond:
            self._m['land_errors'] += 1
            self._m['last_error'] = repr(e)
            for _, f in self._flush_waiters: f.set_exception(e)
            self._flush_waiters = []
            if self._state == 'closed': return False   # close() got the error; the segment is replayed at next start
            self._cond.wait(backoff)
            return self._state != 'closed'

    def _landed(self, seg:_Segment, r, secs:float):
        "Account for segment `seg` landed in `secs` s (lake result `r`), then tell the hook and the flush waiters."
        lag = time.monotonic() - seg.first
        info = dict(batch_id=self.batch_id(seg.seq), seq=seg.seq, rows=seg.rows, bytes=seg.bytes, seconds=secs,
                    lag=lag, files=len(r.files) if r else 0, skipped=bool(r and r.skipped), replay=False)
        with self._cond:
            m = self._m
            m['depth_rows'] -= seg.rows
            m['depth_bytes'] -= seg.bytes
            m['flushes'] += 1
            m['flushed_rows'] += seg.rows
            m['last_batch_id'] = info['batch_id']
            m['last_flush_seconds'], m['last_flush_rows'], m['last_flush_lag'] = secs, seg.rows, lag
            rate = seg.bytes / max(secs, 1e-3)
            self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
            self._sealed = None
            self._landed_through = seg.seq
            done = [f for t, f in self._flush_waiters if t <= seg.seq]
            self._flush_waiters = [(t, f) for t, f in self._flush_waiters if t > seg.seq]
            self._cond.notify_all()
        self._hook(self.on_flush, info)
        for f in done: f.set_result(None)

    def _guard(self, loop):
        "Run a thread's loop; if it dies of a bug, refuse appends and fail every waiting future instead of hanging."
        try: loop()
        except BaseException as e:
            log.critical("spool %s: thread %s died", self.folder, threading.current_thread().name, exc_info=True)
            with self._cond:
                self._broken = e
                self._m['last_error'] = repr(e)
                futs = [i.future for i in self._pending] + [f for _, f in self._flush_waiters]
                self._pending, self._flush_waiters = [], []
                self._cond.notify_all()
            for f in futs:
                if not f.done(): f.set_exception(self._failed(repr(e)))

    def _hook(self, fn, arg):
        if fn is None: return
        try: fn(arg)
        except Exception:
            self._m['hook_errors'] += 1
            log.exception("spool %s: the %s hook failed", self.folder, getattr(fn, '__name__', 'callback'))
