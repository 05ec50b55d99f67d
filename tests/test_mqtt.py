("The MQTT ingester against a real Mosquitto: `iot2ml mqtt` as a real process (and in-process where no process is "
 "needed).")
import json, signal, threading, time
import pandas as pd, pytest
from helpers import wait_for
from projects import Project
from iot2ml.config import Settings
from iot2ml.ingest.routing import DeadLetters
from iot2ml.serve.mqtt import MqttIngester
from iot2ml.ingest.devices import INGEST_USER
from iot2ml.serve.runtime import Service
from iot2ml.ingest.spool import SpoolFull

@pytest.fixture
def proj(tmp_path, mqtt_broker):
    p = Project(tmp_path, mqtt_broker)
    yield p
    p.close()

def seq(i, dev='pump-0001'):
    "Numbered reading i: sensor 'seq', value i, a distinct time."
    return {'device_id': dev, 'ts': 1_767_225_600 + i, 'sensor': 'seq', 'value': i}

def publish_numbered(proj, n, devs=('pump-0001', 'pump-0002'), progress=None):
    ("Publish readings 0..n-1 (QoS 1), one per message, round robin over `devs`, each acknowledged by the broker; "
     "`progress[0]` counts them.")
    clients = {d: proj.device(d) for d in devs}
    pending = []
    for i in range(n):
        d = devs[i % len(devs)]
        pending.append(clients[d].publish(f'iot2ml/{d}/telemetry', json.dumps(seq(i, d)), qos=1))
        if len(pending) >= 100:
            for p in pending:
                p.wait_for_publish(30)
                assert p.is_published()
            pending = []
            if progress is not None: progress[0] = i + 1
    for p in pending:
        p.wait_for_publish(30)
        assert p.is_published()
    if progress is not None: progress[0] = n

def publish_marker(proj, dev='pump-0001'):
    ("Publish a 'marker' reading after everything else: once it is in the lake, whatever the ingester got before it is "
     "too.")
    proj.publish(proj.device(dev), f'iot2ml/{dev}/telemetry', {'ts': '2026-01-01T00:04:00Z', 'sensor': 'marker',
                                                               'value': 0})

def wait_marker(proj):
    wait_for(lambda: len(proj.rows("sensor = 'marker'")), timeout=30, what='the marker reading in the lake')

# ------------------------------------------------------------------------------------------------------------------

def test_readings_land_state_updates_and_bad_ones_are_dead_lettered(proj):
    ing = proj.ingester()
    proj.probe()
    a, b, gw = proj.device('pump-0001'), proj.device('pump-0002'), proj.device('gw-1')
    T = 'iot2ml/{}/telemetry'.format
    # one reading
    proj.publish(a, T('pump-0001'), {'device_id': 'pump-0001', 'ts': '2026-01-01T00:00:00Z', 'sensor': 'flow',
                                     'value': 1.5})
    # a batch, device from the topic
    proj.publish(a, T('pump-0001'), [{'ts': f'2026-01-01T00:00:0{i}Z', 'sensor': 'flow', 'value': i,
                                      'unit': 'm3/h'} for i in range(1, 4)])
    # wide
    proj.publish(b, T('pump-0002'), {'readings': [{'ts': 1767225600, 'flow': 2.0, 'discharge_pressure': 3.5,
                                                   'quality': 1}]})
    # a gateway, for its device
    proj.publish(gw, T('pump-0101'), {'ts': '2026-01-01T01:00:00+01:00', 'sensor': 'flow', 'value': 7})
    proj.publish(a, T('pump-0001'), b'{"ts": "2026-01-01T00:00:00Z", "sensor": "flow", ')                 # not JSON
    # invalid value ...
    proj.publish(a, T('pump-0001'), [{'ts': '2026-01-01T00:01:00Z', 'sensor': 'flow', 'value': 'abc'},
                                     # ... and a good one beside it
                                     {'ts': '2026-01-01T00:01:00Z', 'sensor': 'flow', 'value': 9.0}])
    proj.publish(a, T('pump-0001'), {'ts': '2026-01-01T00:02:00', 'sensor': 'flow', 'value': 1})          # no time zone
    # claims another device
    proj.publish(a, T('pump-0001'), {'device_id': 'pump-0002', 'ts': '2026-01-01T00:03:00Z', 'sensor': 'flow',
                                     'value': 1})
    # late: older than its 2.0
    proj.publish(b, T('pump-0002'), {'ts': '2025-12-31T23:00:00Z', 'sensor': 'flow', 'value': 11.0})
    want = {('pump-0001', 'flow', 1.5), ('pump-0001', 'flow', 1.0), ('pump-0001', 'flow', 2.0),
            ('pump-0001', 'flow', 3.0),
            ('pump-0001', 'flow', 9.0), ('pump-0002', 'flow', 2.0), ('pump-0002', 'discharge_pressure', 3.5),
            ('pump-0101', 'flow', 7.0),
            ('pump-0002', 'flow', 11.0)}
    publish_marker(proj)
    wait_marker(proj)   # nothing else arrived before it
    got = proj.rows("sensor NOT IN ('probe', 'marker')")
    assert sorted(zip(got.device_id, got.sensor, got.value)) == sorted(want)
    assert set(got.loc[got.value.isin([1.0, 2.0, 3.0]) & (got.device_id == 'pump-0001'), 'unit']) == {'m3/h'}
    assert got.loc[got.sensor == 'discharge_pressure', 'quality'].tolist() == [1]
    assert got.loc[got.device_id == 'pump-0101', 'ts'].iloc[0] == pd.Timestamp('2026-01-01T00:00:00Z')
    # latest state: newest by event time per device and sensor
    wait_for(lambda: (proj.latest().device_id == 'pump-0002').sum() == 2, what='latest state')
    l = proj.latest().set_index(['device_id', 'sensor'])['value']
    assert l['pump-0001', 'flow'] == 9.0
    assert l['pump-0002', 'flow'] == 2.0
    assert l['pump-0002', 'discharge_pressure'] == 3.5
    assert l['pump-0101', 'flow'] == 7.0
    # dead letters: each rejected record with its reason, the topic as source, the record as sent
    dead = lambda: DeadLetters(proj.root/'state'/'deadletter').read()
    wait_for(lambda: len(dead()) >= 4, what='4 dead letters')
    dl = dead()
    assert len(dl) == 4 and set(dl.source) == {'mqtt:iot2ml/pump-0001/telemetry'}
    r = {row.field: row for row in dl.itertuples()}
    assert 'is not valid JSON' in r['-'].reason and r['-'].record.startswith('{"ts": "2026-01-01T00:00:00Z"')
    assert r['value'].reason == "'abc' is not a number; send a number such as 12.5" and r['value'].index == 0
    assert r['value'].record == {'ts': '2026-01-01T00:01:00Z', 'sensor': 'flow', 'value': 'abc'}
    assert 'has no time zone' in r['ts'].reason
    assert r['device_id'].reason.startswith("published on iot2ml/pump-0001/telemetry but claims device 'pump-0002'")
    assert proj.stop(ing) == 0
    assert 'Stopped: ' in ing.log_path.read_text()

def test_messages_published_while_the_ingester_is_down_arrive_after_restart(proj):
    ing = proj.ingester()
    proj.probe()
    assert proj.stop(ing) == 0
    n = 2000
    publish_numbered(proj, n)   # the broker queues them for the ingester's session
    publish_marker(proj)
    proj.ingester()
    wait_marker(proj)
    got = proj.rows("sensor = 'seq'")
    assert len(got) == n and sorted(got.value.astype(int)) == list(range(n))

def test_kill_9_mid_load_loses_nothing_the_broker_acknowledged(proj):
    ing = proj.ingester(name='ingest-1')
    proj.probe()
    n, progress, errors = 12_000, [0], []
    def load():
        try: publish_numbered(proj, n, devs=('pump-0001', 'pump-0002', 'pump-0003'), progress=progress)
        except BaseException as e: errors.append(e)
    t = threading.Thread(target=load)
    t.start()
    wait_for(lambda: progress[0] >= n // 3, timeout=30, what='a third of the load')
    wait_for(lambda: len(proj.rows("sensor = 'seq'")) > 0, timeout=10, what='some readings landed before the kill')
    assert proj.stop(ing, signal.SIGKILL) == -signal.SIGKILL
    killed_at = progress[0]
    time.sleep(0.5)
    ing2 = proj.ingester(name='ingest-2')   # replays its spool, resumes the session
    t.join(120)
    assert not errors, errors
    assert killed_at < n
    wait_for(lambda: len(proj.rows("sensor = 'seq'")) >= n, timeout=60, what='the stream to drain')
    assert proj.stop(ing2) == 0
    proj.lake.process()
    got = proj.rows("sensor = 'seq'", tier='processed')
    assert len(got) == n and sorted(got.value.astype(int)) == list(range(n))   # every reading, exactly once

def test_two_ingesters_share_one_stream(proj):
    a = proj.ingester('--shared', 'ingesters', '--client-id', 'ingest-a', '--writer-id', 'ingest-a', name='a')
    b = proj.ingester('--shared', 'ingesters', '--client-id', 'ingest-b', '--writer-id', 'ingest-b', name='b')
    proj.probe(writers={'ingest-a', 'ingest-b'})
    n = 3000
    publish_numbered(proj, n)
    # each ingester landed a marker after its share
    proj.probe(sensor='marker', writers={'ingest-a', 'ingest-b'}, timeout=60)
    got = proj.writers("sensor = 'seq'")
    per = got.groupby('writer').size()
    assert set(per.index) == {'ingest-a', 'ingest-b'} and (per > 0).all(), per    # both got some
    assert len(got) == n and sorted(got.value.astype(int)) == list(range(n))      # the union is everything, once
    assert proj.stop(a) == 0 and proj.stop(b) == 0

# ------------------------------------------------------------------------------------------------------------------ in
# process

@pytest.fixture
def inproc(proj):
    "A Service and an MqttIngester in this process, against the project's broker; (service, ingester) factory."
    made = []
    def make(**kw):
        svc = Service(Settings(root=proj.root, ingest=dict(flush_seconds=0.3))).start()
        ing = MqttIngester(svc, proj.broker.host, proj.broker.port, INGEST_USER, proj.secret, **kw).start()
        made.append((svc, ing))
        return svc, ing
    yield make
    for svc, ing in made:
        ing.stop(5)
        svc.close()

def test_spool_full_holds_messages_unacknowledged_then_stores_them(proj, inproc, monkeypatch):
    svc, ing = inproc()
    assert ing.connected.wait(10), ing.last_error
    full, store, sent = threading.Event(), svc.store, []
    full.set()
    def store_or_full(tables, outcome):
        if full.is_set(): raise SpoolFull(2 << 20, 1 << 20, 0.05)
        return store(tables, outcome)
    monkeypatch.setattr(svc, 'store', store_or_full)
    send = ing._send
    monkeypatch.setattr(ing, '_send', lambda data, gen=None: (sent.append(data), send(data, gen))[1])
    n = 30
    publish_numbered(proj, n)
    wait_for(lambda: ing.spool_full >= 3, what='the ingester to meet a full spool')
    assert ing.acked == 0 and not any(d[:1] == b'\x40' for d in sent)       # no PUBACK while the spool is full
    assert len(proj.rows()) == 0
    full.clear()
    wait_for(lambda: ing.acked == n, what='the held messages to be stored and acknowledged')
    assert sum(d.count(b'\x40\x02') for d in sent) >= n
    svc.writer.flush()
    got = proj.rows("sensor = 'seq'")
    assert len(got) == n and sorted(got.value.astype(int)) == list(range(n))

def test_a_batch_held_across_a_reconnect_is_not_acknowledged_on_the_new_connection(proj, inproc, monkeypatch):
    "Packet ids belong to a connection: what arrived before a reconnect is stored but left for the broker to resend."
    svc, ing = inproc()
    assert ing.connected.wait(10), ing.last_error
    full, store = threading.Event(), svc.store
    full.set()
    def store_or_full(tables, outcome):
        if full.is_set(): raise SpoolFull(2 << 20, 1 << 20, 0.05)
        return store(tables, outcome)
    monkeypatch.setattr(svc, 'store', store_or_full)
    n = 20
    publish_numbered(proj, n)
    wait_for(lambda: ing.spool_full >= 2, what='a full spool')
    ing._sock.shutdown(2)                      # the connection drops while the batch is held
    wait_for(lambda: ing.reconnects >= 1 and ing.connected.is_set(), what='a reconnect')
    full.clear()
    wait_for(lambda: ing.acked == n, what='the resent messages to be acknowledged')
    svc.writer.flush()
    raw = proj.rows("sensor = 'seq'")
    assert n < len(raw) <= 2 * n               # the held batch was stored, and the broker resent it
    proj.lake.process()
    got = proj.rows("sensor = 'seq'", tier='processed')
    assert sorted(got.value.astype(int)) == list(range(n))

def test_wrong_password_is_reported_and_retried(proj, inproc):
    svc = Service(Settings(root=proj.root)).start()
    ing = MqttIngester(svc, proj.broker.host, proj.broker.port, INGEST_USER, 'wrong').start()
    try:
        wait_for(lambda: ing.last_error and 'refused the connection' in ing.last_error, what='the refusal')
        assert 'check --username and --password-file' in ing.last_error and not ing.connected.is_set()
        ing.password = proj.secret   # the operator fixes the password: the next attempt (within 5 s) connects
        wait_for(ing.connected.is_set, timeout=30, what='a retry with the right password')
        assert ing.last_error is None
    finally:
        ing.stop(5)
        svc.close()

# ------------------------------------------------------------------------------------------------------------------ bad
# input

def test_a_flood_of_bad_messages_is_dead_lettered_and_does_not_hold_up_another_device(proj):
    from iot2ml.sim.live import RawPublisher
    ing = proj.ingester()
    proj.probe()
    n = 3000
    flood = RawPublisher(proj.broker.host, proj.broker.port, 'pump-0002', proj.tokens['pump-0002'], 'flood-0002', 5000)
    flood.publish_many([('iot2ml/pump-0002/telemetry', json.dumps({'ts': 'yesterday', 'sensor': 'flow',
                                                                   'value': i}).encode()) for i in range(n)])
    flood.close()                                   # the broker holds all 3,000 for the ingester
    proj.publish(proj.device('pump-0001'), 'iot2ml/pump-0001/telemetry',
                 {'ts': time.time(), 'sensor': 'flow', 'value': 42.0})
    # (3,000 of these once took 100 s to drain, one exact pass and one fsync each, and the good reading waited behind
    # them)
    wait_for(lambda: ((l := proj.latest()).device_id == 'pump-0001').any(), timeout=30,
             what="pump-0001's reading in latest state")
    dl = DeadLetters(proj.root/'state'/'deadletter')
    wait_for(lambda: len(dl.read()) == n, timeout=30, what=f'{n} dead letters')
    df = dl.read()
    assert set(df.source) == {'mqtt:iot2ml/pump-0002/telemetry'} and set(df.field) == {'ts'}
    assert df.reason.str.contains("'yesterday'").all() and sorted(r['value'] for r in df.record) == list(range(n))
    assert proj.stop(ing) == 0

def test_payloads_that_once_looked_like_bugs_get_a_plain_reason(proj):
    ing = proj.ingester()
    proj.probe()
    a, T = proj.device('pump-0001'), 'iot2ml/pump-0001/telemetry'
    deep = '[' * 300 + '1' + ']' * 300   # nested deeper than orjson writes (254)
    # a lone surrogate
    proj.publish(a, T, b'{"ts": "2026-01-01T00:00:00Z", "sensor": "flow", "value": 1, "unit": "\\ud800"}')
    # nested 5,000 deep
    proj.publish(a, T, b'[' * 5000 + b']' * 5000)
    proj.publish(a, T, b'{"ts": "2026-01-01T00:00:00Z", "sensor": "flow", "value": 1, "unit": "\xff"}')  # not UTF-8
    proj.publish(a, T, f'[{{"ts": "2026-01-01T00:01:00Z", "sensor": "flow", "value": 2.0}},'
                       # a deep value beside a good one
                       f' {{"ts": "2026-01-01T00:02:00Z", "sensor": "flow", "value": {deep}}}]')
    dl = DeadLetters(proj.root/'state'/'deadletter')
    wait_for(lambda: len(dl.read()) == 4, what='4 dead letters')
    wait_for(lambda: len(proj.rows("sensor = 'flow'")) == 1, what='the good reading beside the deep value')
    assert proj.rows("sensor = 'flow'").value.tolist() == [2.0]
    r = dl.read().reason.tolist()
    assert not any('bug in iot2ml' in x for x in r), r
    assert r[0].startswith(f"the payload on {T} has a lone surrogate")
    assert r[1].startswith(f"the payload on {T} is nested deeper than 1024 levels")
    assert r[2].startswith(f"the payload on {T} is not valid UTF-8 text")
    rec = dl.read().iloc[3]
    assert rec['index'] == 1 and rec['field'] == 'value' and 'nested deeper than 32 levels: not kept' in rec['record']
    assert proj.stop(ing) == 0


def test_a_quality_beyond_255_is_rejected_as_over_http_not_clipped(tmp_path):
    "The fast path took every-integer qualities and clipped 300 to 255; HTTP rejects it. Same rule, same message."
    svc = Service(Settings(root=tmp_path))
    letters = []
    svc.deadletters.add_many = letters.extend
    try:
        ing = MqttIngester(svc)
        one = '{"ts":"2026-12-01T10:00:0%dZ","sensor":"flow","value":1,"quality":%d}'
        msgs = [(0, b'iot2ml/pump-b/telemetry', (one % (0, 300)).encode()),
                (1, b'iot2ml/pump-b/telemetry', (one % (1, 2)).encode())]
        batch = ing._prepare(msgs, 0)
        assert batch.tables['lake'].column('quality').to_pylist() == [2]
        (errors, _, source), = letters
        assert source == 'mqtt:iot2ml/pump-b/telemetry' and errors[0].field == 'quality'
        assert 'not a quality flag' in errors[0].message
    finally: svc.close()


def test_routes_and_transforms_apply_to_mqtt_as_to_http(tmp_path, monkeypatch):
    "[[ingest.routes]]: a transform converts units; a failing transform dead-letters only its readings, per device."
    (tmp_path/'mqtt_transforms.py').write_text("def no_negatives(df):\n    if (df['value'] < 0).any(): raise "
                                               "ValueError('negative flow')\n    return df\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    routes = [dict(name='temperatures', when="sensor == 'bearing_temp'",
                   transforms=['iot2ml.ingest.routing.fahrenheit_to_celsius']),
              dict(name='flows', device='pump-*', transforms=['mqtt_transforms.no_negatives'])]
    svc = Service(Settings(root=tmp_path/'p', ingest=dict(routes=routes)))
    letters = []
    svc.deadletters.add_many = letters.extend
    try:
        one = '{"ts":"2026-12-01T10:00:0%dZ","sensor":"%s","value":%s%s}'
        payloads = [one % (0, 'bearing_temp', 212, ',"unit":"degF"'), one % (1, 'flow', -5, ''),
                    one % (2, 'flow', 7, '')]
        batch = MqttIngester(svc)._prepare([(k, b'iot2ml/pump-0001/telemetry', p.encode())
                                            for k, p in enumerate(payloads)], 0)
        lake = batch.tables['lake'].to_pandas()
        got = sorted(zip(lake['sensor'], lake['value'], lake['unit'].fillna('')))
        assert got == [('bearing_temp', 100.0, 'degC'), ('flow', 7.0, '')]
        (errors, _, source), = letters
        assert source == 'mqtt:iot2ml/pump-0001/telemetry' and len(errors) == 1
        assert 'transform mqtt_transforms.no_negatives failed: ValueError: negative flow' in errors[0].message
    finally: svc.close()
