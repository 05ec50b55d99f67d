"""Latest state and the lake keep the same reading (issue 8, defect 6): of each device, sensor and time the last to
arrive; a retry changes nothing. Through a real `iot2ml serve` on loopback, then `iot2ml lake process` over its lake."""
import sqlite3
import httpx, pandas as pd, pyarrow as pa
from conftest import BIN, run
from helpers import wait_for
from projects import Server, post
from iot2ml.ml.features import FeatureSpec, online_features
from iot2ml.lake.store import Lake
from iot2ml.ingest.devices import Registry
from iot2ml.ingest.state import LatestState

TS = '2026-01-01T00:10:00Z'
reading = lambda value, sensor='flow', ts=TS: {'device_id': 'pump-0001', 'ts': ts, 'sensor': sensor, 'value': value}

def bucket(state_file) -> list[tuple]:
    "(n, sum, min, max) of every bucket of pump-0001's flow, read as another process would."
    con = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)
    try: return con.execute("SELECT n, s, mn, mx FROM buckets WHERE device_id='pump-0001' AND sensor='flow'").fetchall()
    finally: con.close()

def test_a_resent_reading_is_the_same_in_latest_state_and_the_processed_lake(tmp_path):
    s = Server(tmp_path)
    s.tokens = {'pump-0001': Registry(tmp_path/'state'/'registry.sqlite').add('pump-0001', type='pump').token}
    s.start()
    try:
        # first, a new value, a retry, a marker
        for body in (reading(1.5), reading(2.5), reading(2.5), reading(0.0, sensor='marker')):
            r = post(s, body)
            assert r.status_code == 200 and r.json()['accepted'] == 1, r.text
        get = lambda: httpx.get(s.url + '/v1/devices/pump-0001/latest',
                                headers={'Authorization': f"Bearer {s.tokens['pump-0001']}"}, timeout=10).json()
        # latest state applies batches in order
        sensors = wait_for(lambda: get()['sensors'].get('marker') and get()['sensors'])
        assert sensors['flow'] == {'ts': '2026-01-01T00:10:00+00:00', 'value': 2.5}
        assert bucket(tmp_path/'state'/'latest.sqlite') == [(1, 2.5, 2.5, 2.5)]   # counted once, with the new value
    finally: s.stop()
    run([str(BIN/'iot2ml'), 'lake', 'process'], tmp_path)
    lake = Lake(tmp_path/'data'/'lake')
    assert len(lake.sql("SELECT * FROM raw.telemetry WHERE sensor = 'flow'")) == 3     # all three arrived, as sent
    got = lake.sql("SELECT ts, value FROM processed.telemetry WHERE sensor = 'flow'")
    assert got['value'].tolist() == [2.5] and got['ts'].tolist() == [pd.Timestamp(TS)]

def _table(rows, arrival):
    df = pd.DataFrame(rows, columns=['device_id', 'sensor', 'ts', 'value'])
    df['ts'] = pd.to_datetime(df['ts'], utc=True)
    df['arrival_ts'] = pd.Timestamp(arrival, tz='UTC')
    return pa.Table.from_pandas(df, preserve_index=False)

def test_replacing_the_extreme_of_a_bucket_rebuilds_its_min_max_and_online_features_match(tmp_path):
    "The minimum of an hour replaced by a larger value: min, max, sum and features as if only the new value had come."
    rows = [('p1', 'flow', f'2026-01-01 {h:02d}:{m:02d}Z',
             float(h * 100 + m)) for h in range(3) for m in range(0, 60, 10)]
    once, resent = LatestState(tmp_path/'once.sqlite'), LatestState(tmp_path/'resent.sqlite')
    # 01:00 held the hour's minimum, 100
    fixed = [r if r[2] != '2026-01-01 01:00Z' else (*r[:3], 555.0) for r in rows]
    once.update(_table(fixed, '2026-01-02'))
    resent.update(_table(rows, '2026-01-02'))
    resent.update(_table(rows[3:9], '2026-01-02 00:01'))   # a batch retried
    resent.update(_table([('p1', 'flow', '2026-01-01 01:00Z', 555.0)], '2026-01-02 00:02'))          # then a correction
    pd.testing.assert_frame_equal(resent.window('p1'), once.window('p1'))
    assert resent.window('p1')['min'].tolist() == [0.0, 110.0, 200.0]
    spec = FeatureSpec(expected=6, windows=[2], normal_window=2, lags=[1])
    pd.testing.assert_frame_equal(online_features(resent.window('p1'), spec), online_features(once.window('p1'), spec))
