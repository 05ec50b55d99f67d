("The HTTP service as a real uvicorn process on loopback: formats, partial acceptance, limits, auth, latest state, "
 "crash safety.")
import json, signal, socket, threading
import httpx, pandas as pd, pytest
from helpers import wait_for
from projects import SERVE_CONFIG, Server, lake_rows, post, wait_rows
from iot2ml.lake.store import Lake
from iot2ml.ingest.devices import Registry

R = lambda i=0, **kw: {'device_id': 'pump-0001', 'ts': f'2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z', 'sensor': 'flow',
                       'value': 1.0 + i} | kw

def test_formats_all_land(server):
    s = server
    assert post(s, R(0)).json()['accepted'] == 1                                            # one reading
    assert post(s, [R(1), R(2)]).json()['accepted'] == 2                                    # a batch
    assert post(s, {'readings': [R(3)]}).json()['accepted'] == 1                            # {"readings": [...]}
    wide = {'device_id': 'pump-0001', 'ts': 1767225900, 'power': 40.5, 'motor_current': 71.2}
    assert post(s, wide).json() == {'records': 1, 'accepted': 1, 'rejected': 0, 'errors': []}
    nd = '\n'.join(json.dumps(R(i)) for i in range(10, 13))
    assert post(s, nd, ct='application/x-ndjson').json()['accepted'] == 3
    csv = "device_id,ts,sensor,value\npump-0001,2026-01-01T01:00:00Z,flow,5\npump-0001,2026-01-01T01:01:00Z,flow,6\n"
    assert post(s, csv, ct='text/csv').json()['accepted'] == 2
    df = wait_rows(s, 11)
    assert len(df) == 11 and set(df['sensor']) == {'flow', 'power', 'motor_current'}
    assert df.loc[df['sensor'] == 'power', 'ts'].iloc[0] == pd.Timestamp('2026-01-01 00:05', tz='UTC')

def test_partial_acceptance_and_messages(server):
    s = server
    body = [R(0), R(1, value='abc'), R(2, value=None), {'ts': '2026-01-01T00:03:00Z', 'sensor': 'flow', 'value': 1},
            R(4, ts='2026-01-01 00:04:00'), R(5, ts='2126-01-01T00:00:00Z'), R(6, device_id='pump\u00070001'),
            R(7, device_id='p' * 300), R(8, ts=1767225600123), R(9, ts=1767225600123456), R(10, ts=1767225600123456789),
            R(11, device_id='pump-0002'), 7]
    r = post(s, body)
    assert r.status_code == 200
    out = r.json()
    assert out['accepted'] == 4 and out['rejected'] == 9
    reasons = {e['index']: (e['field'], e['reason']) for e in out['errors']}
    exact = {1: ('value', "'abc' is not a number; send a number such as 12.5"),
             2: ('value', "is missing; every reading needs device_id, ts, sensor, value"),
             3: ('device_id', "is missing; every reading needs device_id, ts, sensor, value"),
             4: ('ts', "'2026-01-01 00:04:00' has no time zone, so it is ambiguous; add 'Z' for UTC or an offset such "
                       "as +01:00"),
             11: ('device_id', "token for pump-0001 may not write readings of pump-0002; use that device's own token")}
    part = {5: 'is more than a day in the future; check the device clock', 6: 'is not a valid device id',
            7: 'is not a valid device id', 12: 'is int, not an object'}
    for i, want in exact.items(): assert reasons.get(i) == want, f"record {i}: {reasons.get(i)}"
    for i, want in part.items(): assert want in reasons.get(i, ('', ''))[1], f"record {i}: {reasons.get(i)}"
    # epoch ms, us and ns are told apart by their size (ns are rounded to us)
    df = wait_rows(s, 4)
    assert sorted(df['ts'].astype(str)) == ['2026-01-01 00:00:00.000000+00:00', '2026-01-01 00:00:00.123000+00:00',
                                            '2026-01-01 00:00:00.123456+00:00', '2026-01-01 00:00:00.123457+00:00']
    # every rejection is in the dead-letter store with its reason
    from iot2ml.ingest.routing import DeadLetters
    dead = DeadLetters(s.root/'state'/'deadletter')   # (the server writes them within a fraction of a second)
    wait_for(lambda: len(dead.read()) == 9, what='the 9 rejected records in the dead-letter store')
    assert "'abc' is not a number; send a number such as 12.5" in set(dead.read().reason)
    assert httpx.get(s.url + '/healthz').status_code == 200

def test_nan_and_infinity_literals_fail_per_record(server):
    "NaN and Infinity as JSON literals (which strict JSON refuses) fail per record; the rest of the batch is kept."
    r = post(server, '[{"device_id":"pump-0001","ts":"2026-01-02T00:00:00Z","sensor":"flow","value":NaN},'
                     '{"device_id":"pump-0001","ts":"2026-01-02T00:01:00Z","sensor":"flow","value":Infinity},'
                     '{"device_id":"pump-0001","ts":"2026-01-02T00:02:00Z","sensor":"flow","value":3}]')
    assert r.json()['accepted'] == 1 and [e['reason'].split(',')[0] for e in r.json()['errors']] == ['is nan', 'is inf']
    assert wait_rows(server, 1)['value'].tolist() == [3.0]

def test_whole_body_errors(server):
    s = server
    r = post(s, b'{"device_id": "pump-0001",')
    assert r.status_code == 400 and r.json()['error'].startswith('the body is not valid JSON')
    assert post(s, b'x', ct='text/xml').status_code == 415
    big = json.dumps([R(i % 3000) for i in range(3000)])            # over max_body_bytes (256 KiB)
    r = post(s, big)
    assert r.status_code == 413 and 'larger than 262,144 bytes' in r.json()['error']
    r = post(s, [R(i) for i in range(2001)])                         # over max_batch, under the size limit
    assert r.status_code in (413,) and 'more than 2,000' in r.json()['error']
    r = post(s, [R(i, value='x') for i in range(3)])
    assert r.status_code == 422 and r.json()['accepted'] == 0

def test_auth(server):
    s = server
    r = httpx.post(s.url + '/v1/readings', json=R(0))
    assert r.status_code == 401 and r.json()['error'].startswith('no token')
    r = post(s, R(0), token='i2m_not-a-real-token')
    assert r.status_code == 401 and r.json()['error'].startswith('unknown token')
    assert httpx.get(s.url + '/v1/latest').status_code == 401 and httpx.get(s.url + '/metrics').status_code == 401
    assert post(s, R(0, device_id='pump-0003'), token='pump-0003').status_code == 200   # fills the server's auth cache
    s.reg.revoke('pump-0003')                                        # ... which must let go within its TTL (1 s)
    r = wait_for(lambda: (r := post(s, R(1, device_id='pump-0003'), token='pump-0003')).status_code != 200 and r)
    assert r.status_code == 403 and 'revoked' in r.json()['error']
    short = s.reg.add('pump-0009', expires_in='1s').token
    r = wait_for(lambda: (r := post(s, R(0, device_id='pump-0009'), token=short)).status_code != 200 and r)
    assert r.status_code == 401 and 'expired' in r.json()['error']
    gw = post(s, [R(0, device_id='pump-0101'), R(0, device_id='pump-0102'), R(0, device_id='pump-0001')],
              token='gw').json()
    assert gw['accepted'] == 2 and gw['errors'][0]['index'] == 2
    assert post(s, R(0, device_id='pump-0002'), token='admin').json()['accepted'] == 1

def test_rate_limit(server):
    s = server
    assert post(s, [R(i) for i in range(1500)]).status_code == 200
    codes = [post(s, [R(i) for i in range(1500, 3000)]) for _ in range(3)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and int(limited[0].headers['Retry-After']) >= 1 and 'rate limit' in limited[0].json()['error']

def test_latest_state_and_metrics(server):
    s = server
    post(s, [R(0, value=1.0), R(10, value=2.0)])
    post(s, R(5, value=99.0))                                        # older than what we have: never overwrites
    post(s, R(0, device_id='pump-0003', sensor='power', value=7.0), token='pump-0003')
    h = {'Authorization': f"Bearer {s.tokens['admin']}"}
    d = wait_for(lambda: (r := httpx.get(s.url + '/v1/devices/pump-0001/latest',
                                         headers=h)).status_code == 200 and r.json())
    assert d['sensors']['flow']['value'] == 2.0 and d['status'] == 'online'
    south = httpx.get(s.url + '/v1/latest', params={'site': 'south'}, headers=h).json()
    assert [(x['device_id'], x['sensor'], x['value']) for x in south] == [('pump-0003', 'power', 7.0)]
    assert httpx.get(s.url + '/v1/devices/nope/latest', headers=h).status_code == 404
    m = httpx.get(s.url + '/metrics', headers=h).text
    assert 'iot2ml_records_received_total 4' in m and '# TYPE iot2ml_spool_depth_rows gauge' in m
    assert httpx.get(s.url + '/docs').status_code == 200
    assert '/v1/readings' in httpx.get(s.url + '/openapi.json').json()['paths']

def test_kill_9_loses_no_acknowledged_reading(tmp_path):
    s = Server(tmp_path)
    reg = Registry(tmp_path/'state'/'registry.sqlite')
    s.tokens = {'pump-0001': reg.add('pump-0001').token, 'admin': reg.add_admin('ops').token}
    config = (SERVE_CONFIG.format(port=s.port)
              .replace('flush_seconds = 0.3', 'flush_seconds = 3600')   # nothing lands before the kill
              .replace('rate_limit = 1000', 'rate_limit = 10000000')
              .replace('rate_burst = 2000', 'rate_burst = 10000000'))
    (tmp_path/'iot2ml.toml').write_text(config)
    s.start()
    acked, stop = [], threading.Event()
    def load():
        i = 0
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                batch = [{'device_id': 'pump-0001', 'ts': int(1767225600 + i * 100 + k), 'sensor': 'flow',
                          'value': float(i)} for k in range(100)]
                try:
                    r = c.post(s.url + '/v1/readings', json=batch,
                               headers={'Authorization': f"Bearer {s.tokens['pump-0001']}"})
                    if r.status_code == 200: acked.append(i)
                except httpx.HTTPError: return
                i += 1
    t = threading.Thread(target=load)
    t.start()
    wait_for(lambda: len(acked) > 30, 30)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    stop.set()
    t.join()
    s.log.close()
    spooled = sum(p.stat().st_size for p in (tmp_path/'state'/'spool').glob('*/seg-*.wal'))
    # every acknowledged reading is in the spool, none in the lake
    assert spooled > 100 * len(acked) and len(lake_rows(s)) == 0
    s.start()                                                        # the restart replays the spool into the lake
    m = httpx.get(s.url + '/metrics', headers={'Authorization': f"Bearer {s.tokens['admin']}"}).text
    s.stop()
    replayed = int(next(l.split()[-1] for l in m.splitlines() if l.startswith('iot2ml_spool_replayed_rows_total')))
    assert replayed >= 100 * len(acked), (replayed, len(acked))
    lk = Lake(tmp_path/'data'/'lake')
    lk.process()
    df = lk.sql("SELECT CAST(value AS INT) AS batch, count(*) AS n FROM processed.telemetry GROUP BY 1")
    got = dict(zip(df['batch'], df['n']))
    assert all(got.get(i) == 100 for i in acked), [i for i in acked if got.get(i) != 100][:5]
    raw = lk.sql("SELECT count(*) AS n, count(DISTINCT ts) AS k FROM raw.telemetry")
    assert raw['n'][0] == raw['k'][0]                                # nothing landed twice, even in the raw tier

def test_routes_and_transforms_from_the_config(tmp_path):
    "[[ingest.routes]] in iot2ml.toml: a transform converts units, a failing transform dead-letters only its records."
    s = Server(tmp_path)
    (tmp_path/'transforms.py').write_text("def no_negatives(df):\n    if (df['value'] < 0).any(): raise "
                                          "ValueError('negative flow')\n    return df\n")
    (tmp_path/'iot2ml.toml').write_text(SERVE_CONFIG.format(port=s.port) + """
[[ingest.routes]]
name = "temperatures"
when = "sensor == 'bearing_temp'"
transforms = ["iot2ml.ingest.routing.fahrenheit_to_celsius"]

[[ingest.routes]]
name = "flows"
device = "pump-*"
transforms = ["transforms.no_negatives"]
""")
    s.tokens = {'pump-0001': Registry(tmp_path/'state'/'registry.sqlite').add('pump-0001').token}
    import os
    env_pp = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = str(tmp_path) + (os.pathsep + env_pp if env_pp else '')
    try: s.start()
    finally:
        if env_pp is None: os.environ.pop('PYTHONPATH')
        else: os.environ['PYTHONPATH'] = env_pp
    try:
        out = post(s, [R(0, sensor='bearing_temp', value=212, unit='degF'), R(1, value=-5.0), R(2, value=7.0)]).json()
        assert out['accepted'] == 2 and out['errors'][0]['index'] == 1
        assert out['errors'][0]['reason'].startswith('transform transforms.no_negatives failed: ValueError: negative '
                                                     'flow')
        df = wait_rows(s, 2)
        assert sorted(zip(df['sensor'], df['value'],
                          df['unit'].fillna(''))) == [('bearing_temp', 100.0, 'degC'), ('flow', 7.0, '')]
    finally: s.stop()

# -- read scopes: a device reads itself, a gateway the devices behind it, an admin everything --------------------------

ROLES = ('admin', 'device', 'gateway', 'none', 'revoked')
OWN, GW, ALL = {'pump-0001'}, {'pump-0101', 'pump-0102'}, {'pump-0001', 'pump-0002', 'pump-0003', 'pump-0101',
                                                           'pump-0102'}
SITES = {'pump-0001': 'north', 'pump-0002': 'north', 'pump-0003': 'south', 'pump-0101': 'north', 'pump-0102': 'south'}

@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    ("A server with latest values and scores of five devices (pump-0101 and pump-0102 behind gateway gw-1), and a "
     "token per role.")
    from iot2ml.serve.scoring import ensure_scores_table
    from iot2ml.ingest.state import LatestState
    root = tmp_path_factory.mktemp('fleet')
    s, reg = Server(root), Registry(root/'state'/'registry.sqlite')
    gw = reg.add('gw-1', kind='gateway').token
    issued = {d: reg.add(d, site=site, gateway_id='gw-1' if d.startswith('pump-01') else None) for d,
              site in SITES.items()}
    revoked = reg.add('pump-0004').token
    reg.revoke('pump-0004')
    s.tokens = {'admin': reg.add_admin('ops').token, 'device': issued['pump-0001'].token, 'gateway': gw,
                'revoked': revoked}
    con = LatestState(root/'state'/'latest.sqlite').con
    ensure_scores_table(con)
    con.executemany('INSERT INTO scores VALUES (?,?,?,?,?,?,?,?)', [(d, 0, 0, 'v1', 0.5, 0, None, None) for d in ALL])
    con.commit()
    s.start()
    assert post(s, [R(0, device_id=d) for d in ALL], token='admin').json()['accepted'] == 5
    wait_for(lambda: len(call(s, 'admin', 'GET', '/v1/latest').json()) == 5)
    yield s
    s.stop()

def call(s, role, method, path, body=None):
    h = {} if role == 'none' else {'Authorization': f"Bearer {s.tokens[role]}"}
    return httpx.request(method, s.url + path, json=body, headers=h, timeout=10)

# (method, path, body) -> {role: status, or (status, the devices the answer shows)}; no token: 401, revoked: 403
SCOPES = [
    (('GET', '/v1/devices/pump-0001/latest', None), {'admin': (200, OWN), 'device': (200, OWN), 'gateway': 403}),
    (('GET', '/v1/devices/pump-0101/latest', None), {'admin': (200, {'pump-0101'}), 'device': 403,
                                                     'gateway': (200, {'pump-0101'})}),
    # no probing for ids
    (('GET', '/v1/devices/pump-0404/latest', None), {'admin': 404, 'device': 403, 'gateway': 403}),
    (('GET', '/v1/latest', None), {'admin': (200, ALL), 'device': (200, OWN), 'gateway': (200, GW)}),
    (('GET', '/v1/latest?site=north', None), {'admin': (200, {'pump-0001', 'pump-0002', 'pump-0101'}),
                                              'device': (200, OWN),
                                              'gateway': (200, {'pump-0101'})}),
    (('GET', '/v1/latest?site=south&sensor=flow', None), {'admin': (200, {'pump-0003', 'pump-0102'}),
                                                          'device': (200, set()),
                                                          'gateway': (200, {'pump-0102'})}),
    (('GET', '/v1/scores', None), {'admin': (200, ALL), 'device': (200, OWN), 'gateway': (200, GW)}),
    (('GET', '/v1/scores?alert=0', None), {'admin': (200, ALL), 'device': (200, OWN), 'gateway': (200, GW)}),
    (('GET', '/v1/scores?device=pump-0001', None), {'admin': (200, OWN), 'device': (200, OWN), 'gateway': 403}),
    (('GET', '/v1/scores?device=pump-0101&device=pump-0002', None), {'admin': (200, {'pump-0101', 'pump-0002'}),
                                                                     'device': 403, 'gateway': 403}),
    # 503: past the scope check, stopped by the missing champion model
    (('POST', '/v1/predict', {'devices': ['pump-0001']}), {'admin': 503, 'device': 503, 'gateway': 403}),
    (('POST', '/v1/predict', {'devices': ['pump-0101', 'pump-0102']}), {'admin': 503, 'device': 403, 'gateway': 503}),
    (('POST', '/v1/predict', {'rows': [{'device_id': 'pump-0001', 'x': 1.0}]}),
     {'admin': 503, 'device': 503, 'gateway': 403}),
    (('POST', '/v1/predict', {'rows': [{'device_id': 'pump-0102', 'x': 1.0}, {'device_id': 'pump-0002', 'x': 1.0}]}),
     {'admin': 503, 'device': 403, 'gateway': 403}),
    # rows of no device: admins only
    (('POST', '/v1/predict', {'rows': [{'x': 1.0}]}), {'admin': 503, 'device': 403, 'gateway': 403}),
    (('GET', '/metrics', None), {'admin': 200, 'device': 403, 'gateway': 403}),
    # writes: pump-0001 is not behind gw-1
    (('POST', '/v1/readings', R(0)), {'admin': 200, 'device': 200, 'gateway': 422}),
    (('GET', '/healthz', None), {'admin': 200, 'device': 200, 'gateway': 200, 'none': 200, 'revoked': 200}),
]
CASES = [pytest.param(req, role, exp.get(role, {'none': 401, 'revoked': 403}.get(role)),
                      id=f"{req[0]} {req[1]} {req[2] or ''} as {role}")
         for req, exp in SCOPES for role in ROLES]

@pytest.mark.parametrize('req,role,expected', CASES)
def test_read_scopes(fleet, req, role, expected):
    status, visible = expected if isinstance(expected, tuple) else (expected, None)
    r = call(fleet, role, *req)
    assert r.status_code == status, r.text
    if visible is not None:
        out = r.json()
        assert {x['device_id'] for x in (out if isinstance(out, list) else [out])} == visible
    if status == 403 and role in ('device', 'gateway'):
        who = {'device': 'pump-0001', 'gateway': 'gw-1'}[role]
        assert r.json()['error'].startswith(f"token for {who} may ")
        assert 'may read only' in r.json()['error'] or 'admin' in r.json()['error']

# -- limits of a stricter server: rejects charged to the rate limit, slow and vanishing bodies -------------------------

@pytest.fixture
def strict(tmp_path):
    ("A server with a small rate limit (1,000 readings/s, bursts of 2,000), batches up to 100,000 and a 1 s body read "
     "timeout.")
    s = Server(tmp_path, env={'IOT2ML_INGEST__RATE_LIMIT': '1000', 'IOT2ML_INGEST__RATE_BURST': '2000',
                              'IOT2ML_INGEST__MAX_BATCH': '100000', 'IOT2ML_INGEST__READ_TIMEOUT': '1'})
    s.tokens = {'pump-0001': Registry(tmp_path/'state'/'registry.sqlite').add('pump-0001').token}
    s.start()
    yield s
    s.stop()

def test_rejected_records_are_charged_to_the_rate_limit(strict):
    body = '[' + ','.join(['1'] * 50_000) + ']'                    # 50,000 records, every one rejected
    codes = [post(strict, body).status_code for _ in range(20)]
    assert codes == [422] + [429] * 19, codes                       # the first drains the bucket for 48 s

def raw_post(s, length:int, sent:bytes, chunked=False) -> socket.socket:
    "A socket that sent the headers of a POST /v1/readings with a body of `length` bytes, and `sent` of it."
    size = 'Transfer-Encoding: chunked' if chunked else f'Content-Length: {length}'
    head = (f"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {s.tokens['pump-0001']}\r\n"
            f"Content-Type: application/json\r\n{size}\r\n\r\n")
    sock = socket.create_connection(('127.0.0.1', s.port), timeout=30)   # the bound of every wait below
    sock.sendall(head.encode() + (f"{len(sent):x}\r\n".encode() + sent + b"\r\n" if chunked else sent))
    return sock

def read_all(sock:socket.socket) -> bytes:
    "Everything the server sends until it closes the connection (socket.timeout if it does not)."
    got = b''
    while chunk := sock.recv(65536): got += chunk
    sock.close()
    return got

@pytest.mark.parametrize('chunked', [False, True])
def test_a_stalled_body_gets_408_and_a_closed_connection(strict, chunked):
    got = read_all(raw_post(strict, 10_000, b'[' + b'1,' * 100, chunked))   # a part of the body, then nothing
    assert got.startswith(b'HTTP/1.1 408') and b'read_timeout' in got, got[:300]
    assert post(strict, R(0)).status_code == 200                            # the server goes on

@pytest.mark.parametrize('sent', [b'', b'POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl'],
                         ids=['nothing', 'half the headers'])
def test_a_connection_stalling_before_its_headers_end_is_closed(strict, sent):
    "Slowloris: a client that connects and never finishes its request line and headers is cut off after read_timeout."
    sock = socket.create_connection(('127.0.0.1', strict.port), timeout=30)
    sock.sendall(sent)
    assert read_all(sock) == b''                                            # closed, not left open (socket.timeout)
    assert post(strict, R(0)).status_code == 200

def test_idle_keep_alive_connections_are_closed(strict):
    "uvicorn closes a kept-alive connection that sends nothing after a response (timeout_keep_alive, 5 s)."
    sock = socket.create_connection(('127.0.0.1', strict.port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_all(sock).startswith(b'HTTP/1.1 200')

def test_a_client_closing_mid_body_logs_one_line(strict):
    log = strict.root/'serve.log'
    before = len(log.read_bytes())
    raw_post(strict, 10_000, b'[' + b'1,' * 100).close()
    wait_for(lambda: len(log.read_bytes()) > before)
    assert post(strict, R(0)).status_code == 200                            # the server goes on, and logs nothing more
    new = log.read_bytes()[before:].decode()
    assert 'Traceback' not in new and len(new.splitlines()) == 1, new
    assert 'closed the connection' in new and 'pump-0001' in new
