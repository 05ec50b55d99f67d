"The Parquet lake: round trip, idempotent batches, late data, dedup, compaction, atomic writes, catalog, SQL."
import hashlib, json, os, re
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest
from iot2ml.lake.store import HOURLY_SCHEMA, Lake, LakeError, SqlRefused, SqlTimeout, atomic_path
from iot2ml.schema import RAW_SCHEMA

def batch(devices=('pump-0001', 'pump-0002'), sensors=('flow', 'power'), start='2026-01-01 00:00', minutes=60,
          arrival=None, value=None, seed=0):
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=minutes, freq='1min', tz='UTC')
    df = pd.DataFrame([(d, t, s) for d in devices for s in sensors for t in ts], columns=['device_id', 'ts', 'sensor'])
    df['value'] = rng.normal(size=len(df)) if value is None else value
    df['unit'] = 'x'
    df['quality'] = np.uint8(0)
    df['arrival_ts'] = pd.Timestamp(arrival, tz='UTC') if arrival else df['ts'] + pd.Timedelta('30s')
    return pa.Table.from_pandas(df, preserve_index=False)

@pytest.fixture
def lake(tmp_path): return Lake(tmp_path/'lake', fsync=False)

def test_round_trip(lake):
    b = batch(minutes=120)
    lake.land(b, 'b1')
    lake.process()
    got = lake.read('telemetry')
    want = b.to_pandas().drop(columns='arrival_ts').sort_values(['device_id', 'sensor', 'ts'], ignore_index=True)
    assert len(got) == len(want)
    np.testing.assert_allclose(got['value'].to_numpy(), want['value'].to_numpy())
    assert (got['ts'].to_numpy() == want['ts'].to_numpy()).all()
    assert str(got['ts'].dtype) == 'datetime64[us, UTC]'

def test_same_batch_twice_is_stored_once(lake):
    assert not lake.land(batch(), 'b1').skipped
    r = lake.land(batch(), 'b1')
    assert r.skipped and r.rows == 240
    assert lake.sql("SELECT count(*) n FROM raw.telemetry")['n'][0] == 240
    assert lake.catalog().set_index('tier').loc['raw', 'rows'] == 240

def test_late_data_lands_in_its_event_date(lake):
    lake.land(batch(start='2026-01-01 23:30'), 'b1')
    late = batch(start='2026-01-01 12:00', minutes=5, arrival='2026-01-03 09:00')
    r = lake.land(late, 'late-1')
    assert [f.parent.name for f in r.files] == ['date=2026-01-01']
    assert lake.process() == ['2026-01-01', '2026-01-02']
    assert lake.process() == []
    lake.land(batch(start='2026-01-02 06:00', minutes=3, arrival='2026-01-04'), 'late-2')
    assert lake.process() == ['2026-01-02']             # only the touched day is rebuilt

def test_dedup_last_arrival_wins_and_sorted(lake):
    lake.land(batch(minutes=10, value=1.0, arrival='2026-01-01 01:00'), 'first')
    lake.land(batch(minutes=5, value=2.0, arrival='2026-01-01 02:00'), 'resend')
    lake.land(batch(minutes=3, value=0.5, arrival='2026-01-01 00:30'), 'older')   # lands later, arrived earlier
    lake.process()
    df = lake.read('telemetry', devices='pump-0001', sensors='flow')
    assert df['value'].tolist() == [2.0] * 5 + [1.0] * 5
    full = lake.read('telemetry')
    assert full.equals(full.sort_values(['device_id', 'sensor', 'ts'], ignore_index=True))
    assert not full.duplicated(['device_id', 'sensor', 'ts']).any()

def test_compaction_keeps_every_row_and_idempotency(lake):
    for i in range(5): lake.land(batch(minutes=10, start=f'2026-01-01 0{i}:00'), f'b{i}')
    before = lake.sql("SELECT sum(value) s, count(*) n FROM raw.telemetry")
    assert lake.compact(min_files=3) == 1
    assert len(lake.partitions('raw', 'telemetry')['2026-01-01']) == 1
    after = lake.sql("SELECT sum(value) s, count(*) n FROM raw.telemetry")
    assert after['n'][0] == before['n'][0] and np.isclose(after['s'][0], before['s'][0])
    assert lake.land(batch(minutes=10, start='2026-01-01 02:00'), 'b2').skipped

def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path/'d'/'x.parquet'
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            Path(tmp).write_bytes(b'partial')
            raise RuntimeError('crash')
    assert not dest.exists() and list(dest.parent.iterdir()) == []

def test_partition_pruning_and_filters(lake):
    for d in range(1, 6): lake.land(batch(start=f'2026-01-0{d} 10:00', minutes=5), f'd{d}')
    lake.process()
    files = lake.files('processed', 'telemetry', start='2026-01-02', end='2026-01-03 05:00')
    assert sorted(f.parent.name for f in files) == ['date=2026-01-02', 'date=2026-01-03']
    df = lake.read('telemetry', devices=['pump-0002'], sensors=['power'], start='2026-01-02', end='2026-01-03')
    assert set(df['device_id']) == {'pump-0002'} and set(df['sensor']) == {'power'} and len(df) == 5
    w = lake.read('telemetry', devices='pump-0001', start='2026-01-05', wide=True)
    assert list(w.columns) == ['flow', 'power'] and len(w) == 5

def test_catalog_entries(lake):
    lake.land(batch(minutes=30), 'b1')
    lake.process()
    lake.publish_hourly()
    cat = lake.catalog().set_index(['tier', 'name'])
    assert set(cat.index) == {('raw', 'telemetry'), ('processed', 'telemetry'), ('published', 'telemetry_hourly')}
    e = cat.loc[('processed', 'telemetry')]
    assert e['rows'] == 120 and e['start'].startswith('2026-01-01T00:00') and e['end'].startswith('2026-01-01T00:29')
    assert e['produced_by'] == 'iot2ml.lake.store.Lake.process' and e['owner'] and e['tags']
    assert [c[0] for c in e['schema']] == ['device_id', 'ts', 'sensor', 'value', 'unit', 'quality']

def test_hourly_aggregate_matches_pandas(lake):
    ("Every statistic of the hourly aggregate (mean, min, max, std, last, count) equals pandas', and the published "
     "tier holds the same.")
    lake.land(batch(minutes=180), 'b1')
    lake.process()
    lake.publish_hourly()
    a = lake.aggregate(every='1 hour')
    df = lake.read('telemetry')
    df['ts'] = df['ts'].dt.floor('1h')      # rows sorted by ts: pandas' last is the newest
    stats = [c for c in HOURLY_SCHEMA.names if c not in ('device_id', 'ts', 'sensor')]
    assert stats == ['mean', 'min', 'max', 'std', 'last', 'count']
    p = df.groupby(['device_id', 'sensor', 'ts'])['value'].agg(stats).reset_index()[HOURLY_SCHEMA.names]
    assert len(p) == 2 * 2 * 3 and (p['last'] != p['max']).any() and (p['last'] != p['min']).any()
    pd.testing.assert_frame_equal(a, p, check_dtype=False, rtol=1e-12)
    pd.testing.assert_frame_equal(lake.read('telemetry_hourly')[HOURLY_SCHEMA.names], p, check_dtype=False, rtol=1e-12)

def test_sql_is_read_only_and_errors_are_plain(lake):
    lake.land(batch(minutes=5), 'b1')
    with pytest.raises(LakeError, match='read-only'):
        lake.sql("DROP VIEW telemetry")
    with pytest.raises(LakeError, match='the query failed'):
        lake.sql("SELECT nope FROM telemetry")
    with pytest.raises(LakeError, match=r"no dataset 'telemetri' in the lake .*did you mean 'telemetry'"):
        lake.read('telemetri')

@pytest.fixture
def full_lake(tmp_path, monkeypatch):
    ("A lake with every kind of view (raw, processed, published, reference) and a Parquet file outside it; cwd is "
     "tmp_path.")
    monkeypatch.chdir(tmp_path)
    lk = Lake(tmp_path/'data'/'lake', fsync=False)
    lk.land(batch(minutes=90), 'b1')
    lk.process()
    lk.publish_hourly()
    lk.write_reference('assets', pd.DataFrame({'device_id': ['pump-0001', 'pump-0002'], 'site': ['north', 'south']}))
    (tmp_path/'data'/'outside').mkdir()
    pq.write_table(pa.table({'secret': [42]}), tmp_path/'data'/'outside'/'secret.parquet')
    return lk

def _files(root:Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}

ESCAPES = {   # every escape found in issue 8, and the other ways out: each must be refused with a clear reason
    'second statement': ("SELECT 1; COPY (SELECT 42 AS x) TO 'x.csv'", "exactly one statement"),
    'explain analyze copy': ("EXPLAIN ANALYZE COPY (SELECT 7) TO 'y.csv'", "EXPLAIN statement"),
    'explain': ("EXPLAIN SELECT 1", "EXPLAIN statement"),
    'copy into the lake': ("COPY (SELECT * FROM raw.telemetry LIMIT 1) TO "
                           "'{lake}/raw/telemetry/date=2026-11-01/zz.parquet'", "COPY statement"),
    'copy to a file': ("COPY (SELECT 42 AS x) TO 'x.csv'", "COPY statement"),
    'read /etc/passwd': ("SELECT * FROM read_csv('/etc/passwd')", "only the lake's own files"),
    'read_text': ("SELECT * FROM read_text('/etc/hostname')", "only the lake's own files"),
    'glob /root': ("SELECT * FROM glob('/root/*')", "only the lake's own files"),
    'parquet outside the lake': ("SELECT * FROM read_parquet('{tmp}/data/outside/secret.parquet')",
                                 "only the lake's own files"),
    'dot-dot out of the lake': ("SELECT * FROM read_parquet('{lake}/../outside/secret.parquet')",
                                "only the lake's own files"),
    'attach': ("ATTACH 'x.db' AS x", "ATTACH statement"),
    'attach and create': ("ATTACH 'x.db' AS x; CREATE TABLE x.t AS SELECT 1", "exactly one statement"),
    'create table': ("CREATE TABLE t AS SELECT 1", "CREATE statement"),
    'drop view': ("DROP VIEW telemetry", "DROP statement"),
    'delete': ("DELETE FROM telemetry", "DELETE statement"),
    'set': ("SET enable_external_access = true", "SET statement"),
    'reset': ("RESET memory_limit", "SET statement"),
    'pragma setting': ("PRAGMA memory_limit='100GB'", "SET statement"),     # DuckDB parses this PRAGMA as a SET
    'pragma': ("PRAGMA enable_profiling", "PRAGMA statement"),
    'install': ("INSTALL httpfs", "LOAD statement"),
    'load': ("LOAD httpfs", "LOAD statement"),
    'export': ("EXPORT DATABASE 'dump'", "EXPORT statement"),
    'empty': (" ; -- nothing", "exactly one statement"),
}

@pytest.mark.parametrize('name', ESCAPES)
def test_sql_sandbox_refuses_every_escape(full_lake, tmp_path, name):
    "Not one SELECT, or a file outside the lake: a clear refusal, and no file anywhere is written or changed."
    query, reason = ESCAPES[name]
    before = _files(tmp_path)
    with pytest.raises(SqlRefused, match=re.escape(reason)) as e:
        full_lake.sql(query.format(lake=full_lake.root.resolve(), tmp=tmp_path))
    assert '\n' not in str(e.value)
    # nothing planted in the lake, no x.csv / y.csv / x.db in the working folder
    assert _files(tmp_path) == before

def test_sql_sandbox_reads_every_view_of_the_lake(full_lake):
    ("Legitimate queries still work: every tier, the plain names, reference tables, DESCRIBE/SUMMARIZE, the lake's own "
     "files.")
    q = lambda sql: full_lake.sql(sql).iloc[0, 0]
    assert q("SELECT count(*) FROM raw.telemetry") == 360 and q("SELECT count(*) FROM processed.telemetry") == 360
    assert q("SELECT count(*) FROM telemetry") == 360 and q("FROM published.telemetry_hourly SELECT sum(count)") == 360
    assert q("WITH a AS (SELECT * FROM reference.assets) SELECT site FROM a ORDER BY device_id") == 'north'
    assert q("SELECT count(*) FROM telemetry t JOIN reference.assets USING (device_id)") == 360
    assert 'value' in set(full_lake.sql("DESCRIBE telemetry")['column_name'])
    assert len(full_lake.sql("SUMMARIZE telemetry")) == 6
    own = full_lake.root.resolve()/'processed'/'telemetry'/'*'/'*.parquet'
    assert q(f"SELECT count(*) FROM read_parquet('{own}')") == 360
    t = full_lake.sql("SELECT device_id, count(*) AS n FROM telemetry GROUP BY 1 ORDER BY 1", arrow=True)
    assert isinstance(t, pa.Table) and t.to_pydict() == {'device_id': ['pump-0001', 'pump-0002'], 'n': [180, 180]}

def test_sql_sandbox_stops_a_slow_query_and_a_greedy_one(full_lake):
    ("A query past its timeout is interrupted (a 10^12-row cross join would run for hours); one past its memory limit "
     "stops too.")
    slow = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range < 0"
    with pytest.raises(SqlTimeout, match=r"the query ran longer than 0.5 s; narrow it or raise --timeout"):
        full_lake.sql(slow, timeout=0.5)
    with pytest.raises(LakeError, match=r"the query needs more than 64MB of memory; narrow it or raise --memory-limit"):
        full_lake.sql("SELECT list(range) FROM range(100000000)", memory_limit='64MB')
    assert full_lake.sql("SELECT 1 AS one", timeout=30)['one'][0] == 1

def test_schema_errors_name_the_column(lake):
    with pytest.raises(LakeError, match=r"the batch has no column 'value'"):
        lake.land(batch().drop(['value']), 'b1')
    with pytest.raises(LakeError, match=r"batch id 'a b' is not valid"):
        lake.land(batch(), 'a b')

def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()

def test_byte_reproducible(tmp_path):
    for name in ('a', 'b'):
        lk = Lake(tmp_path/name/'lake', fsync=False)
        lk.land(batch(minutes=90, start='2026-01-01 23:00'), 'b1')
        lk.land(batch(minutes=3, arrival='2026-01-05'), 'b2')
        lk.process()
        lk.publish_hourly()
        lk.write_reference('assets', pd.DataFrame({'device_id': ['pump-0001'], 'site': ['n']}))
    assert _digest(tmp_path/'a') == _digest(tmp_path/'b')

def test_read_a_derived_dataset_without_sensors(tmp_path):
    "Datasets other than telemetry (the model's scores) read too; asking them for sensors is a clear error."
    import pyarrow as pa, pyarrow.parquet as pq
    from iot2ml.lake.store import Lake, LakeError
    lake = Lake(tmp_path/'lake', tmp_path/'reference', fsync=False)
    d = tmp_path/'lake'/'raw'/'scores'/'date=2026-01-02'
    d.mkdir(parents=True)
    ts = pd.to_datetime(['2026-01-02T01:00Z', '2026-01-02T00:00Z'])
    pq.write_table(pa.table({'device_id': ['p2', 'p1'], 'ts': ts, 'risk': [0.5, 0.1]}), d/'a.parquet')
    df = lake.read('scores', tier='raw')
    assert list(df['device_id']) == ['p1', 'p2'] and list(df['risk']) == [0.1, 0.5]
    with pytest.raises(LakeError, match="no sensor column"): lake.read('scores', sensors=['flow'], tier='raw')
