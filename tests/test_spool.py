"The write-ahead spool: durable appends, flush triggers, group commit, torn tails, kill -9 recovery, backpressure."
import os, signal, subprocess, sys, threading
from pathlib import Path
import duckdb, numpy as np, pandas as pd, pyarrow as pa, pytest
from iot2ml.lake.store import Lake
from iot2ml.ingest.spool import SpooledWriter, SpoolFull, read_segment
from helpers import wait_for

T0 = pd.Timestamp('2026-01-01', tz='UTC')

def readings(start:int, n:int=1, device='dev-1') -> pa.Table:
    "`n` numbered readings: reading k has ts = T0 + k seconds and value = k."
    k = np.arange(start, start + n)
    return pa.table({'device_id': [device] * n, 'ts': pa.array(T0 + pd.to_timedelta(k, 's')),
                     'sensor': ['flow'] * n, 'value': k.astype(float)})

def raw_counts(lake:Lake) -> pd.DataFrame:
    "Rows per reading number in the raw tier."
    glob = lake.path('raw', 'telemetry')/'date=*'/'*.parquet'
    return duckdb.sql(f"SELECT value, device_id, sensor, epoch_us(ts) - {T0.value // 1000} AS us, count(*) AS n "
                      f"FROM read_parquet('{glob}') GROUP BY ALL").df()

def segs(folder:Path) -> list[str]: return sorted(p.name for p in Path(folder).glob('seg-*.wal'))

@pytest.fixture
def lake(tmp_path): return Lake(tmp_path/'lake')

def test_append_durable_flush_lands(lake, tmp_path):
    flushed = []
    w = SpooledWriter(lake, tmp_path/'spool', writer_id='w1', flush_seconds=3600, on_flush=flushed.append).start()
    seqs = [w.append(readings(i * 10, 10)).result() for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert {w.batch_id(s) for s in seqs} == {'w1-000000000001'}
    st = w.stats
    assert st['appended_rows'] == 50 and st['depth_rows'] == 50 and st['flushes'] == 0
    assert len(read_segment(tmp_path/'spool'/'seg-000000000001.wal')[0]) == 5   # on disk before any flush
    w.flush()
    assert w.stats['depth_rows'] == 0 and w.stats['depth_bytes'] == 0 and w.stats['flushes'] == 1
    assert [f['batch_id'] for f in flushed] == ['w1-000000000001'] and flushed[0]['rows'] == 50
    assert segs(tmp_path/'spool') == ['seg-000000000002.wal']   # the landed segment is gone; the open one stays
    w.append(readings(50, 10)).result()
    w.close()
    assert [f['batch_id'] for f in flushed] == ['w1-000000000001', 'w1-000000000002']
    c = raw_counts(lake)
    assert len(c) == 60 and (c['n'] == 1).all() and set(c['value']) == set(range(60))
    batches = lake.path('raw', 'telemetry')/'_batches'
    assert sorted(p.stem for p in batches.glob('*.json')) == ['w1-000000000001', 'w1-000000000002']
    # a restart never reuses a landed id, even if the spool folder was wiped
    for p in (tmp_path/'spool').glob('seg-*'): p.unlink()
    with SpooledWriter(lake, tmp_path/'spool', writer_id='w1') as w2:
        assert w2.batch_id(w2.append(readings(60)).result()) == 'w1-000000000003'
    assert len(raw_counts(lake)) == 61

def test_one_writer_per_folder(lake, tmp_path):
    with SpooledWriter(lake, tmp_path/'spool'):
        with pytest.raises(RuntimeError, match='in use'): SpooledWriter(lake, tmp_path/'spool').start()

@pytest.mark.parametrize('trigger', ['rows', 'bytes', 'seconds'])
def test_flush_triggers(lake, tmp_path, trigger):
    kw = dict(flush_rows=10**9, flush_bytes=1 << 40, flush_seconds=3600)
    kw[{'rows': 'flush_rows', 'bytes': 'flush_bytes',
        'seconds': 'flush_seconds'}[trigger]] = {'rows': 20, 'bytes': 4000, 'seconds': 0.2}[trigger]
    flushed = []
    w = SpooledWriter(lake, tmp_path/'spool', on_flush=flushed.append, **kw).start()
    try:
        n = 1 if trigger == 'seconds' else 30
        for i in range(n): w.append(readings(i * 2, 2)).result()
        wait_for(lambda: w.stats['flushes'] >= 1)   # no flush() call: the trigger alone lands
        assert flushed[0]['rows'] >= (2 if trigger == 'seconds' else 20 if trigger == 'rows' else 4)
    finally: w.close()
    assert sum(f['rows'] for f in flushed) == 2 * n

def test_group_commit(lake, tmp_path, monkeypatch):
    # Batching shows when appends arrive while an fsync is in flight. Rather than depend on this disk's speed,
    # hold every fsync until all 8 producers have appended: a writer that commits one append per fsync needs 2000
    # of them, a group-committing one a handful however slow or fast the machine is.
    real, gate = os.fdatasync, threading.Event()
    monkeypatch.setattr(os, 'fdatasync', lambda fd: (gate.wait(60), real(fd))[1])
    commits = []
    w = SpooledWriter(lake, tmp_path/'spool', flush_seconds=3600,
                      on_commit=lambda t: commits.append(t.num_rows)).start()
    futs = [[] for _ in range(8)]
    def producer(k):
        for i in range(250): futs[k].append(w.append(readings(k * 1000 + i)))
    ths = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for t in ths: t.start()
    for t in ths: t.join()
    gate.set()
    seqs = [[f.result(timeout=30) for f in fs] for fs in futs]
    st = w.stats
    assert st['appended_records'] == 2000 and st['fsyncs'] <= 20, st
    assert sum(commits) == 2000 and len(commits) == st['fsyncs']   # on_commit once per group, after its fsync
    assert all(s == sorted(s) for s in seqs) and len({x for s in seqs for x in s}) == 2000
    w.close()
    assert len(raw_counts(lake)) == 2000

DRIVER = r'''
import os, sys, threading
import numpy as np, pandas as pd, pyarrow as pa
from iot2ml.lake.store import Lake
from iot2ml.ingest.spool import SpooledWriter
lake_dir, spool_dir, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
T0 = pd.Timestamp('2026-01-01', tz='UTC')
def readings(k):
    return pa.table({'device_id': ['dev-1'], 'ts': pa.array([T0 + pd.Timedelta(seconds=k)]), 'sensor': ['flow'],
                     'value': [float(k)]})
class CrashAfterLand(Lake):
    def land(self, *a, **kw):
        r = super().land(*a, **kw)
        print(f"landed {r.batch_id}\n", end='', flush=True)
        os._exit(9)   # after the landing, before the segment delete
lake = (CrashAfterLand if os.environ.get('SPOOL_CRASH_AFTER_LAND') else Lake)(lake_dir)
w = SpooledWriter(lake, spool_dir, writer_id='crash', flush_rows=int(os.environ.get('FLUSH_ROWS', '50')),
                  flush_seconds=3600).start()
print("started", flush=True)
for k in range(n):
    w.append(readings(k)).result()
    print(f"{k}\n", end='', flush=True)   # k and everything before it are acknowledged (one write: threads print too)
os._exit(0)                           # no close(): leave the spool as a crash would
'''

def run_driver(tmp_path, mode, n, env=None, kill_after=None):
    "Run the driver; kill -9 it once it has acknowledged `kill_after` readings; returns (highest acked, other lines)."
    script = tmp_path/'driver.py'
    script.write_text(DRIVER)
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path/'lake'), str(tmp_path/'spool'), mode, str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | (env or {}))
    acked, other = -1, []
    try:
        for line in p.stdout:
            line = line.strip()
            if line.isdigit():
                acked = int(line)
                if kill_after is not None and acked >= kill_after:
                    os.kill(p.pid, signal.SIGKILL)
                    break
            else: other.append(line)
        for line in p.stdout:   # acks printed before the kill are acks
            line = line.strip()
            if line.isdigit(): acked = int(line)
            else: other.append(line)
        p.wait(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert 'started' in other, p.stderr.read()
    return acked, other

def check_exactly_once(lake, acked):
    c = raw_counts(lake)
    assert (c['n'] == 1).all(), c[c['n'] > 1]
    assert set(range(acked + 1)) <= set(c['value'].astype(int))
    assert (c['device_id'] == 'dev-1').all()
    assert (c['sensor'] == 'flow').all()
    assert (c['value'] == c['value'].round()).all()
    assert (c['us'] == c['value'] * 1_000_000).all()   # each reading is the one the driver numbered, intact
    return c

def test_kill_9_mid_load(lake, tmp_path):
    acked, _ = run_driver(tmp_path, 'loop', 10**6, kill_after=400)
    assert acked >= 400
    replayed = []
    w = SpooledWriter(lake, tmp_path/'spool', writer_id='crash', on_flush=replayed.append).start()
    assert any(f['replay'] for f in replayed) and segs(tmp_path/'spool') == [segs(tmp_path/'spool')[-1]]
    w.close()
    c = check_exactly_once(lake, acked)
    assert len(c) <= acked + 2   # at most the one reading in flight when killed (written, never acknowledged)

def test_kill_after_land_before_delete(lake, tmp_path):
    acked, other = run_driver(tmp_path, 'loop', 10**6, env={'SPOOL_CRASH_AFTER_LAND': '1', 'FLUSH_ROWS': '50'})
    assert 'landed crash-000000000001' in other and acked >= 0
    assert 'seg-000000000001.wal' in segs(tmp_path/'spool')   # landed, but not deleted
    replayed = []
    with SpooledWriter(lake, tmp_path/'spool', writer_id='crash', on_flush=replayed.append):
        pass
    first = next(f for f in replayed if f['batch_id'] == 'crash-000000000001')
    assert first['skipped'] and first['replay']   # the lake already had it: not landed twice
    check_exactly_once(lake, acked)

class BrokenLake(Lake):
    def land(self, *a, **kw): raise OSError(28, 'No space left on device')

@pytest.mark.parametrize('damage', ['cut', 'flip', 'garbage'])
def test_torn_tail(lake, tmp_path, damage):
    acked, _ = run_driver(tmp_path, 'few', 3, env={'FLUSH_ROWS': '1000'})
    assert acked == 2
    seg = tmp_path/'spool'/'seg-000000000001.wal'
    data = seg.read_bytes()
    good, _, size = read_segment(seg)
    assert len(good) == 3
    if damage == 'cut': seg.write_bytes(data[:-7])                       # a write torn mid-record
    # reading 2's value 2.0 -> 3.0: only the crc sees it
    elif damage == 'flip':
        i = data.rindex(np.float64(2.0).tobytes())
        seg.write_bytes(data[:i] + np.float64(3.0).tobytes() + data[i + 8:])
    else: seg.write_bytes(data + b'\xff\xff\xff\x7f' + os.urandom(20))   # a length past the end
    want = {0, 1, 2} if damage == 'garbage' else {0, 1}
    with pytest.raises(OSError): SpooledWriter(BrokenLake(tmp_path/'lake'), tmp_path/'spool', writer_id='crash').start()
    tables, good_bytes, size = read_segment(seg)   # the replay could not land, but it truncated the torn tail
    assert good_bytes == size and len(tables) == len(want)
    replayed = []
    with SpooledWriter(lake, tmp_path/'spool', writer_id='crash', on_flush=replayed.append):
        pass
    assert set(raw_counts(lake)['value'].astype(int)) == want
    assert replayed[0]['rows'] == len(want) and replayed[0]['batch_id'] == 'crash-000000000001'

class SlowLake(Lake):
    "A lake whose land waits for `gate`."
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.landing = threading.Event()
    def land(self, *a, **kw):
        self.landing.set()
        self.gate.wait(30)
        return super().land(*a, **kw)

def test_backpressure(tmp_path):
    lake = SlowLake(tmp_path/'lake')
    w = SpooledWriter(lake, tmp_path/'spool', flush_rows=1, flush_seconds=3600, max_bytes=20_000).start()
    try:
        w.append(readings(0, 10)).result()
        lake.landing.wait(10)   # the flusher is now stuck landing the first segment
        accepted, k = 1, 1
        with pytest.raises(SpoolFull) as e:
            while k < 1000:
                w.append(readings(k * 10, 10)).result()
                accepted += 1
                k += 1
        assert e.value.retry_after > 0 and w.stats['spool_full'] == 1 and 1 < accepted < 1000
        assert w.stats['depth_bytes'] <= 20_000
        lake.gate.set()
        w.flush()   # the flusher catches up
        assert w.stats['depth_bytes'] == 0
        w.append(readings(k * 10, 10)).result()
        accepted += 1
    finally:
        lake.gate.set()
        w.close()
    assert len(raw_counts(lake)) == 10 * accepted

def test_append_async(lake, tmp_path):
    import asyncio
    async def main(w): return await asyncio.gather(*(w.append_async(readings(i)) for i in range(20)))
    with SpooledWriter(lake, tmp_path/'spool') as w:
        seqs = asyncio.run(main(w))
    assert len(set(seqs)) == 20 and len(raw_counts(lake)) == 20

def test_failed_fsync_is_not_acknowledged(lake, tmp_path, monkeypatch):
    w = SpooledWriter(lake, tmp_path/'spool', flush_seconds=3600).start()
    w.append(readings(0)).result()
    real, calls = os.fdatasync, []
    def flaky(fd):
        calls.append(fd)
        if len(calls) == 1: raise OSError(5, 'Input/output error')
        return real(fd)
    monkeypatch.setattr(os, 'fdatasync', flaky)
    with pytest.raises(OSError): w.append(readings(1)).result()
    w.append(readings(2)).result()   # the failed record was truncated away: later records replay fine
    monkeypatch.undo()
    segment = read_segment(tmp_path/'spool'/'seg-000000000001.wal')[0]
    assert [t.column('value')[0].as_py() for t in segment] == [0.0, 2.0]
    w.close()
    assert set(raw_counts(lake)['value']) == {0.0, 2.0}
