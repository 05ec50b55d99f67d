"""Model serving through a real uvicorn server on loopback: /v1/predict by feature rows and by device ids (online
features from latest state agree with the batch features), errors, hot reload of a newly promoted champion under load,
and streaming scoring into the lake and latest state. Real registry files and real trained bundles (the example
workspace)."""
import json, shutil, threading, time
from pathlib import Path
import httpx, numpy as np, pandas as pd, pyarrow as pa, pytest, uvicorn

from iot2ml.serve.http import create_app
from iot2ml.config import ScoringSettings, TrainParams, load_settings
from iot2ml.ml.features import FeatureSpec
from iot2ml.lake.store import Lake
from iot2ml.ml.registry import ModelRegistry
from iot2ml.ml.models import load_model, save_model
from iot2ml.ml.pipeline import example_workspace, train
from iot2ml.ingest.devices import Registry
from iot2ml.serve.runtime import Service
from iot2ml.ingest.state import LatestState
from conftest import bundle_with_spec as _with_spec   # shared with test_fuzz's champion
from helpers import free_port, wait_for

@pytest.fixture(scope='module')
def ws():
    return example_workspace('evaluate')

@pytest.fixture(scope='module')
def bundles(ws, tmp_path_factory):
    "Two different trained bundles: the example workspace's, and one trained again with fewer iterations."
    d = tmp_path_factory.mktemp('bundles')
    expected = json.loads((ws['prepared_dir']/'summary.json').read_text())['expected_per_interval']
    train(ws['features_dir'], d/'raw_b', TrainParams(max_iter=20), 48)
    return [_with_spec(ws['model_dir'], d/'a', expected), _with_spec(d/'raw_b', d/'b', expected)]

@pytest.fixture(scope='module')
def state_file(ws, tmp_path_factory):
    "A latest-state file fed with every (deduplicated) reading of the example lake."
    p = tmp_path_factory.mktemp('state')/'latest.sqlite'
    st = LatestState(p, window='30D')
    r = Lake(ws['lake_dir'], ws['reference_dir'], fsync=False).read('telemetry', tier='processed')
    st.update(pa.Table.from_pandas(r[['device_id', 'sensor', 'ts', 'value']], preserve_index=False))
    st.con.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    st.con.close()
    return p

class Server:
    "The API of a fresh project as a real uvicorn server in a thread."
    def __init__(self, root:Path, state_file:Path, scoring:ScoringSettings):
        self.root, self.port = root, free_port()
        (root/'iot2ml.toml').write_text(f"[ingest]\nport = {self.port}\nflush_seconds = 0.2\nwindow = '30D'\n")
        (root/'state').mkdir()
        shutil.copy(state_file, root/'state'/'latest.sqlite')
        reg = Registry(root/'state'/'registry.sqlite')
        self.tokens = {d: reg.add(d, type='pump').token for d in ('pump-0001', 'pump-0002', 'pump-0003')}
        self.tokens['admin'] = reg.add_admin('ops').token
        self.models = ModelRegistry(root/'state'/'registry')
        self.settings = load_settings(root/'iot2ml.toml')
        self.svc = Service(self.settings, scoring=scoring)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, headers={'Authorization': f"Bearer {self.tokens['admin']}"},
                                 timeout=30)

    def start(self):
        self.svc.start()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.settings, self.svc), host='127.0.0.1',
                                                    port=self.port, log_level='warning'))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, what='the server to start')
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.svc.close()
        self.http.close()

    def predict(self, body, **kw): return self.http.post('/v1/predict', json=body, **kw)

@pytest.fixture
def make_server(tmp_path, state_file):
    started = []
    def make(versions=(), champion=None, **scoring):
        s = Server(tmp_path, state_file, ScoringSettings(**({'reload_check': 0.2} | scoring)))
        for b in versions: s.models.register(b)
        if champion: s.models.promote(champion, reason='test')
        started.append(s.start())
        return s
    yield make
    for s in started: s.stop()

def batch_risk(ws, model_dir, pairs):
    "The model's risk on the batch feature table's rows (device_id, ts)."
    f = pd.read_parquet(ws['features_dir']/'features.parquet')
    return load_model(model_dir).predict_proba(f.loc[[(d, pd.Timestamp(t)) for d, t in pairs]]).to_numpy()

def batch_anomaly(ws, model_dir, pairs):
    ("The detector's score at each (device_id, ts), over that device's window of the model's history from the lake's "
     "hourly aggregates.")
    m = load_model(model_dir)
    spec = m.feature_spec
    agg = Lake(ws['lake_dir'], ws['reference_dir'], fsync=False).aggregate('telemetry', every=spec.every,
                                                                           tier='processed')
    out = []
    for d, t in pairs:
        t = pd.Timestamp(t)
        w = agg[(agg['device_id'] == d) & (agg['ts'] >= t - spec.history) & (agg['ts'] <= t)]
        out.append(m.anomaly_score(spec.table(w)).loc[(d, t)])
    return np.array(out)

def test_predict_by_rows_and_by_devices_agrees_with_batch(ws, bundles, make_server):
    s = make_server(bundles, champion='v1')
    devices = [f"pump-{i:04d}" for i in range(1, 9)]
    r = s.predict({'devices': devices})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out['model_version'] == 'v1'
    assert out['errors'] == []
    assert [p['device_id'] for p in out['predictions']] == devices
    preds = out['predictions']
    # the newest complete interval (23:00 may still fill)
    assert {p['ts'] for p in preds} == {'2026-01-14T22:00:00+00:00'}
    assert all(p['model_version'] == 'v1' and p['alert'] in (0, 1) for p in preds)
    want = batch_risk(ws, bundles[0], [(p['device_id'], p['ts']) for p in preds])
    np.testing.assert_allclose([p['risk'] for p in preds], want, rtol=1e-9)   # online features == batch features
    # the anomaly score is the detector's over each device's window of history (it looks back): the same from the lake
    assert all(p['anomaly'] is not None and np.isfinite(p['anomaly']) for p in preds)
    np.testing.assert_allclose([p['anomaly'] for p in preds],
                               batch_anomaly(ws, bundles[0], [(p['device_id'], p['ts']) for p in preds]), rtol=1e-6)
    assert s.predict({'devices': devices}).json() == out                      # the cached answer is the same
    # feature rows, as the batch table holds them
    f = pd.read_parquet(ws['features_dir']/'features.parquet').iloc[[5, 500, 1500]]
    rows = json.loads(f.reset_index().assign(ts=lambda d: d['ts'].astype(str)).to_json(orient='records'))
    r = s.predict({'rows': rows})
    assert r.status_code == 200, r.text
    got = r.json()['predictions']
    np.testing.assert_allclose([p['risk'] for p in got], load_model(bundles[0]).predict_proba(f).to_numpy(), rtol=1e-9)
    assert [p['device_id'] for p in got] == list(f.index.get_level_values('device_id'))
    assert got[0]['ts'] == str(f.index[0][1])
    # the OpenAPI schema documents the endpoint and its shapes
    api = s.http.get('/openapi.json').json()
    op = api['paths']['/v1/predict']['post']
    assert 'PredictRequest' in json.dumps(op['requestBody']) and 'PredictResponse' in json.dumps(op['responses']['200'])
    assert {'risk', 'alert', 'rul_hours', 'anomaly', 'model_version',
            'ts'} <= set(api['components']['schemas']['Prediction']['properties'])

def test_no_champion_is_503_until_one_is_promoted(bundles, make_server):
    s = make_server(bundles)                    # versions registered, no champion yet
    r = s.predict({'devices': ['pump-0001']})
    assert r.status_code == 503 and 'promote one: iot2ml models promote V or iot2ml retrain' in r.json()['error']
    assert 'iot2ml_model_info{version="none"} 0' in s.http.get('/metrics').text
    s.models.promote('v1', reason='test')       # picked up without a restart
    wait_for(lambda: s.predict({'devices': ['pump-0001']}).status_code == 200, 30, 'the first champion')
    assert 'iot2ml_model_info{version="v1"} 1' in s.http.get('/metrics').text

def test_devices_it_cannot_score_are_per_device_errors(bundles, make_server):
    "An unknown device and one with too little history are per-device errors; the others are answered."
    s = make_server(bundles, champion='v1')
    wait_for(lambda: s.predict({'devices': ['pump-0001']}).status_code == 200, 30, 'the champion')
    s.svc.state.update(pa.table({'device_id': ['pump-0099'] * 2, 'sensor': ['flow'] * 2, 'value': [1.0, 2.0],
                                 'ts': pd.to_datetime(['2026-01-14T22:10Z', '2026-01-14T23:10Z'])}))
    out = s.predict({'devices': ['pump-0001', 'nope-1', 'pump-0099']}).json()
    assert [p['device_id'] for p in out['predictions']] == ['pump-0001']
    errs = {e['device_id']: e for e in out['errors']}
    assert errs['nope-1']['status'] == 404 and "no readings from device 'nope-1'" in errs['nope-1']['error']
    assert errs['pump-0099']['status'] == 404
    assert 'has 1 h of history' in errs['pump-0099']['error']
    assert 'need 241 h' in errs['pump-0099']['error']

def test_bad_predict_requests_are_4xx_naming_the_problem(bundles, make_server):
    s = make_server(bundles, champion='v1')
    wait_for(lambda: s.predict({'devices': ['pump-0001']}).status_code == 200, 30, 'the champion')
    # rows without the model's columns: 422 naming them
    r = s.predict({'rows': [{'device_id': 'pump-0001', 'flow_mean': 3.0}]})
    assert r.status_code == 422
    assert 'bearing_temp_coverage' in r.json()['error']
    assert 'feature columns' in r.json()['error']
    cols = load_model(bundles[0]).features
    r = s.predict({'rows': [dict.fromkeys(cols, 0.0) | {cols[3]: 'high'}]})
    assert r.status_code == 422 and cols[3] in r.json()['error'] and 'not numbers' in r.json()['error']
    assert s.predict({'rows': [dict.fromkeys(cols)]}).status_code == 200      # nulls are unknown values, allowed
    assert s.predict({'rows': [], 'devices': ['pump-0001']}).status_code == 422
    assert s.predict({}).status_code == 422
    assert httpx.post(s.url + '/v1/predict', json={'devices': ['pump-0001']}).status_code == 401
    m = s.http.get('/metrics').text
    assert 'iot2ml_model_info{version="v1"} 1' in m and 'iot2ml_predictions_total' in m

def test_hot_reload_under_load_fails_no_request(bundles, make_server):
    s = make_server(bundles, champion='v1')
    cols = load_model(bundles[0]).features
    row = {'rows': [dict.fromkeys(cols, 0.5)]}
    seen, failures, stop = [], [], threading.Event()
    def client(body):
        with httpx.Client(base_url=s.url, headers={'Authorization': f"Bearer {s.tokens['admin']}"}, timeout=30) as c:
            while not stop.is_set():
                try:
                    start = time.monotonic()
                    r = c.post('/v1/predict', json=body)
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text))
                        continue
                    out = r.json()
                    seen.append((start, out['model_version']))
                    assert len(out['predictions']) == 1
                    assert all(p['model_version'] == out['model_version'] for p in out['predictions'])
                except Exception as e: failures.append(repr(e))
    threads = [threading.Thread(target=client, args=(b,)) for b in ({'devices': ['pump-0001']},
                                                                    {'devices': ['pump-0005']}, row)]
    for t in threads: t.start()
    try:
        wait_for(lambda: len(seen) > 20, what='requests')
        for version in ('v2', 'v1', 'v2'):
            n = len(seen)
            s.models.promote(version, reason='hot reload test')
            wait_for(lambda: any(v == version for t, v in seen[n:]), 20, f"responses from {version}")
            # an answer from the new model has come back: every request sent from now on gets it
            switched = time.monotonic()
            wait_for(lambda: sum(t > switched for t, v in seen) > 20, what='more requests')
            assert {v for t, v in list(seen) if t > switched} == {version}          # once switched, no old answers
    finally:
        stop.set()
        for t in threads: t.join(30)
    assert failures == [] and len(seen) > 100
    assert 'iot2ml_model_info{version="v2"} 1' in s.http.get('/metrics').text
    # a bundle that cannot load: the old champion keeps serving
    broken = s.models.path('v1')
    (s.root/'broken').mkdir()
    shutil.copy(broken/'model.json', s.root/'broken'/'model.json')
    (s.root/'broken'/'model.joblib').write_bytes(b'not a model')
    s.models.promote(s.models.register(s.root/'broken'), reason='broken on purpose')
    wait_for(lambda: s.svc.predictor.champion.failures >= 1, 30, 'the failed load')
    r = s.predict({'devices': ['pump-0001']})
    assert r.status_code == 200 and r.json()['model_version'] == 'v2'

def test_streaming_scoring_writes_lake_and_latest_state(ws, bundles, make_server):
    s = make_server(bundles, champion='v1', enabled=True, interval=0.3)
    readings = [{'device_id': d, 'ts': f'2026-01-15T00:{m:02d}:00Z', 'sensor': sensor, 'value': v}
                for d in ('pump-0001', 'pump-0002', 'pump-0003') for m in (0, 5, 10)
                for sensor, v in (('flow', 40.0), ('power', 30.0), ('vibration_rms', 2.0))]
    r = s.http.post('/v1/readings', json=readings)
    assert r.status_code == 200 and r.json()['accepted'] == len(readings)
    lake = Lake(s.settings.lake_dir)
    def scored():
        try: df = lake.sql("SELECT * FROM raw.scores")
        except Exception: return None
        return df if set(df['device_id']) >= {'pump-0001', 'pump-0002', 'pump-0003'} else None
    df = wait_for(scored, 60, 'scores in the lake')
    # 23:00 is complete now
    assert set(df['model_version']) == {'v1'} and (df['ts'] == pd.Timestamp('2026-01-14 23:00', tz='UTC')).all()
    assert set(df['alert']) <= {0, 1} and df['scored_at'].notna().all()
    df = df.sort_values('device_id')
    pairs = list(zip(df['device_id'], df['ts']))
    # the model's risk on the batch features
    np.testing.assert_allclose(df['risk'], batch_risk(ws, bundles[0], pairs), rtol=1e-9)
    np.testing.assert_allclose(df['anomaly'], batch_anomaly(ws, bundles[0], pairs), rtol=1e-6)
    assert {'device_id', 'ts', 'scored_at', 'model_version', 'risk', 'alert', 'rul_hours', 'anomaly'} <= set(df.columns)
    assert 'raw/scores' in json.loads((s.settings.lake_dir/'catalog.json').read_text())
    # latest state: newest score per device, over the API
    sc = s.http.get('/v1/scores').json()
    assert {x['device_id'] for x in sc} == {'pump-0001', 'pump-0002', 'pump-0003'}
    assert {x['model_version'] for x in sc} == {'v1'}
    alerts = s.http.get('/v1/scores', params={'alert': 1}).json()
    assert {x['device_id'] for x in alerts} == {x['device_id'] for x in sc if x['alert'] == 1}
    d = s.http.get('/v1/devices/pump-0002/latest').json()
    assert d['score']['model_version'] == 'v1' and d['score']['ts'] == '2026-01-14T23:00:00+00:00'
    # the same scores the API gives for the same devices and state
    p = {x['device_id']: x for x in s.predict({'devices': ['pump-0001', 'pump-0002',
                                                           'pump-0003']}).json()['predictions']}
    assert all(abs(p[x['device_id']]['risk'] - x['risk']) < 1e-12 for x in sc)
    m = s.http.get('/metrics').text
    assert 'iot2ml_scoring_passes_total' in m and 'iot2ml_scoring_devices_scored_total 3' in m
