"The Parquet lake: round trip, idempotent batches, late data, dedup, compaction, atomic writes, catalog, SQL."
import hashlib, json, os
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest
from iot2ml.lake import Lake, LakeError, atomic_path
from iot2ml.schema import RAW_SCHEMA

def batch(devices=('pump-0001', 'pump-0002'), sensors=('flow', 'power'), start='2026-01-01 00:00', minutes=60, arrival=None, value=None, seed=0):
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=minutes, freq='1min', tz='UTC')
    df = pd.DataFrame([(d, t, s) for d in devices for s in sensors for t in ts], columns=['device_id', 'ts', 'sensor'])
    df['value'] = rng.normal(size=len(df)) if value is None else value
    df['unit'] = 'x'; df['quality'] = np.uint8(0)
    df['arrival_ts'] = pd.Timestamp(arrival, tz='UTC') if arrival else df['ts'] + pd.Timedelta('30s')
    return pa.Table.from_pandas(df, preserve_index=False)

@pytest.fixture
def lake(tmp_path): return Lake(tmp_path/'lake', fsync=False)

def test_round_trip(lake):
    b = batch(minutes=120)
    lake.land(b, 'b1'); lake.process()
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
    lake.land(batch(minutes=30), 'b1'); lake.process(); lake.publish_hourly()
    cat = lake.catalog().set_index(['tier', 'name'])
    assert set(cat.index) == {('raw', 'telemetry'), ('processed', 'telemetry'), ('published', 'telemetry_hourly')}
    e = cat.loc[('processed', 'telemetry')]
    assert e['rows'] == 120 and e['start'].startswith('2026-01-01T00:00') and e['end'].startswith('2026-01-01T00:29')
    assert e['produced_by'] == 'iot2ml.lake.Lake.process' and e['owner'] and e['tags']
    assert [c[0] for c in e['schema']] == ['device_id', 'ts', 'sensor', 'value', 'unit', 'quality']

def test_hourly_aggregate_matches_pandas(lake):
    lake.land(batch(minutes=180), 'b1'); lake.process()
    a = lake.aggregate(every='1 hour').set_index(['device_id', 'sensor', 'ts'])
    df = lake.read('telemetry'); df['hour'] = df['ts'].dt.floor('1h')
    p = df.groupby(['device_id', 'sensor', 'hour'])['value'].agg(['mean', 'std', 'min', 'max', 'count'])
    np.testing.assert_allclose(a['mean'].to_numpy(), p['mean'].to_numpy())
    np.testing.assert_allclose(a['std'].to_numpy(), p['std'].to_numpy())
    assert (a['count'].to_numpy() == p['count'].to_numpy()).all()

def test_sql_is_read_only_and_errors_are_plain(lake):
    lake.land(batch(minutes=5), 'b1')
    with pytest.raises(LakeError, match='read-only'):
        lake.sql("DROP VIEW telemetry")
    with pytest.raises(LakeError, match='the query failed'):
        lake.sql("SELECT nope FROM telemetry")
    with pytest.raises(LakeError, match=r"no dataset 'telemetri' in the lake .*did you mean 'telemetry'"):
        lake.read('telemetri')

def test_schema_errors_name_the_column(lake):
    with pytest.raises(LakeError, match=r"the batch has no column 'value'"):
        lake.land(batch().drop(['value']), 'b1')
    with pytest.raises(LakeError, match=r"batch id 'a b' is not valid"):
        lake.land(batch(), 'a b')

def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file(): h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
    return h.hexdigest()

def test_byte_reproducible(tmp_path):
    for name in ('a', 'b'):
        lk = Lake(tmp_path/name/'lake', fsync=False)
        lk.land(batch(minutes=90, start='2026-01-01 23:00'), 'b1'); lk.land(batch(minutes=3, arrival='2026-01-05'), 'b2')
        lk.process(); lk.publish_hourly(); lk.write_reference('assets', pd.DataFrame({'device_id': ['pump-0001'], 'site': ['n']}))
    assert _digest(tmp_path/'a') == _digest(tmp_path/'b')

def test_read_a_derived_dataset_without_sensors(tmp_path):
    "Datasets other than telemetry (the model's scores) read too; asking them for sensors is a clear error."
    import pyarrow as pa, pyarrow.parquet as pq
    from iot2ml.lake import Lake, LakeError
    lake = Lake(tmp_path/'lake', tmp_path/'reference', fsync=False)
    d = tmp_path/'lake'/'raw'/'scores'/'date=2026-01-02'; d.mkdir(parents=True)
    ts = pd.to_datetime(['2026-01-02T01:00Z', '2026-01-02T00:00Z'])
    pq.write_table(pa.table({'device_id': ['p2', 'p1'], 'ts': ts, 'risk': [0.5, 0.1]}), d/'a.parquet')
    df = lake.read('scores', tier='raw')
    assert list(df['device_id']) == ['p1', 'p2'] and list(df['risk']) == [0.1, 0.5]
    with pytest.raises(LakeError, match="no sensor column"): lake.read('scores', sensors=['flow'], tier='raw')
