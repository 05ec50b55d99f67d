"""The dead-letter store: each reject stored once and compactly, capped (counts and samples beyond the caps), writes
batched, never raising on what a sender sent; over a real `iot2ml serve`; and `iot2ml deadletters list|replay` run as
the real command."""
import json, os, subprocess, time
from pathlib import Path
import httpx, pytest
from conftest import BIN
from helpers import free_port, wait_for
from iot2ml.ingest.routing import DeadLetters
from iot2ml.lake.store import Lake
from iot2ml.ingest.devices import Registry
from iot2ml.schema import RecordError

ONES = [RecordError(i, '-',
                    "is int, not an object; send objects with device_id, ts, sensor, value") for i in range(50_000)]

def day_bytes(folder:Path) -> int: return sum(f.stat().st_size for f in folder.glob('????-??-??.ndjson'))

def test_each_reject_is_stored_once_and_compactly(tmp_path):
    dl = DeadLetters(tmp_path)
    dl.add(ONES, [1] * 50_000, 'http:pump-0001')   # the body of 50,000 `1`s that grew the store by 9.4 MB
    dl.add([RecordError(0, 'value', "'x' is not a number; send a number such as 12.5"),
            RecordError(0, 'unit', "is 5, not a string; send a unit such as 'bar' or leave it out")],
           [{'sensor': 'flow', 'value': 'x', 'unit': 5, 'pad': 'p' * 1000}], 'http:pump-0001')
    dl.close()
    assert day_bytes(tmp_path) < 15 * 50_000 + 2000
    text = next(tmp_path.glob('*.ndjson')).read_text()
    assert text.count('p' * 1000) == 1                    # a record with two reasons: stored once
    df = dl.read()
    assert len(df) == 50_001 and df['record'].iloc[0] == 1
    assert df['reasons'].iloc[-1] == [['value', "'x' is not a number; send a number such as 12.5"],
                                      ['unit', "is 5, not a string; send a unit such as 'bar' or leave it out"]]

def test_beyond_the_caps_only_counts_and_samples_are_kept(tmp_path):
    dl = DeadLetters(tmp_path, max_bytes_per_day=100_000, max_bytes=1 << 30)
    for k in range(200): dl.add(ONES[:1000], [{'k': k, 'i': i} for i in range(1000)],
                                f'mqtt:iot2ml/pump-{k:04d}/telemetry')
    dl.close()
    assert day_bytes(tmp_path) <= 100_000
    kept = len(dl.read())
    (s,) = dl.summaries().values()
    assert kept + s['records'] == 200_000 and s['counts'] == {'-:invalid': 200_000 - kept}
    assert len(s['samples']['-:invalid']) == 5 and s['samples']['-:invalid'][0]['record'] == {'k': kept // 1000, 'i': 0}
    assert next(tmp_path.glob('*.summary.json')).stat().st_size < 5000
    total = DeadLetters(tmp_path/'all', max_bytes_per_day=1 << 30, max_bytes=100_000)   # the cap in all, too
    for k in range(200): total.add(ONES[:1000], [1] * 1000, 'http:x')
    total.close()
    assert day_bytes(tmp_path/'all') <= 100_000 and total.over_caps > 0

def test_adds_are_written_in_batches_not_fsynced_each(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (calls.append(fd), real(fd))[1])
    dl = DeadLetters(tmp_path)
    for i in range(1000): dl.add([RecordError(0, 'ts', "'yesterday' is not a time")], [{'ts': 'yesterday', 'n': i}],
                                 'mqtt:iot2ml/pump-b/telemetry')
    dl.close()
    assert len(dl.read()) == 1000 and len(calls) < 50

def test_what_json_cannot_hold_is_kept_as_text_and_never_raises(tmp_path):
    deep = 1.0
    for _ in range(300): deep = [deep]
    dl = DeadLetters(tmp_path)
    recs = [{'value': float('nan')}, {'value': deep}, {'device_id': '\ud800'}, {7: 'a key that is not a string'},
            'x' * 10_000]
    dl.add([RecordError(i, 'value', f"bad \ud800 {i}") for i in range(len(recs))], recs, 'http:p\udc80')
    dl.close()
    df = dl.read()
    assert df['text'].tolist() == [True] * 5
    assert df['record'].iloc[0] == '{"value": NaN}'                # as sent, not null
    assert 'nested deeper than 32 levels: not kept' in df['record'].iloc[1]
    assert df['record'].iloc[2] == '{"device_id": "\\ud800"}'
    assert df['record'].iloc[3] == '{"7": "a key that is not a string"}'
    assert df['record'].iloc[4].endswith('more bytes not kept)') and len(df['record'].iloc[4]) < 4200
    assert df['reason'].iloc[0] == 'bad \\ud800 0'

# -- over a real `iot2ml serve` -------------------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path):
    "`iot2ml serve` on a free port of 127.0.0.1 with a registry: a device, a gateway (pump-0101 not yet behind it)."
    port = free_port()
    (tmp_path/'iot2ml.toml').write_text(f"[ingest]\nflush_seconds = 0.3\nport = {port}\n")
    reg = Registry(tmp_path/'state'/'registry.sqlite')
    tokens = {'pump-0001': reg.add('pump-0001', type='pump').token, 'gw-1': reg.add('gw-1', kind='gateway').token}
    log = open(tmp_path/'serve.log', 'ab')
    p = subprocess.Popen([str(BIN/'iot2ml'), 'serve'], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180   # (a loaded machine: starting takes tens of seconds)
    while time.monotonic() < end and p.poll() is None:
        try:
            if httpx.get(url + '/healthz', timeout=0.5).status_code == 200: break
        except httpx.HTTPError: pass
        time.sleep(0.05)
    else:
        p.kill()   # never leave a server behind
        p.wait(30)
        raise AssertionError((tmp_path/'serve.log').read_text()[-2000:])
    post = lambda who, body, ct='application/json': httpx.post(url + '/v1/readings', content=body, timeout=10,
                                                               headers={'Authorization': f"Bearer {tokens[who]}",
                                                                        'content-type': ct})
    yield tmp_path, reg, post
    if p.poll() is None:
        p.terminate()
        p.wait(30)
    log.close()

GOOD = '{"device_id": "pump-0001", "ts": "2026-11-04T00:00:00Z", "sensor": "flow", "value": 1.5}'

def test_http_dead_letters_hold_what_was_sent(served):
    root, _, post = served
    r = post('pump-0001',
             f'[{GOOD}, {{"device_id": "pump-0001", "ts": "2026-11-04T00:01:00Z", "sensor": "flow", "value": NaN}}]')
    assert r.status_code == 200 and r.json()['accepted'] == 1
    deep = '[' * 300 + '1' + ']' * 300   # nested deeper than orjson writes (254), beside a valid reading: was a 500
    r = post('pump-0001', f'[{GOOD.replace("00:00:00", "00:02:00")}, '
                          f'{{"device_id": "pump-0001", "ts": "2026-11-04T00:03:00Z", "sensor": "flow", '
                          f'"value": {deep}}}]')
    assert r.status_code == 200 and r.json()['accepted'] == 1, r.text
    r = post('pump-0001', 'device_id,ts,sensor,value\npump-0001,2026-11-04T00:04:00Z,flow,NaN\n', 'text/csv')
    assert r.status_code == 422
    dl = DeadLetters(root/'state'/'deadletter')
    wait_for(lambda: len(dl.read()) == 3, what='3 dead letters')
    df = dl.read()
    assert df['record'].iloc[0] == ('{"device_id": "pump-0001", "ts": "2026-11-04T00:01:00Z", "sensor": "flow", '
                                    '"value": NaN}')
    assert df['text'].iloc[1] and 'nested deeper than 32 levels' in df['record'].iloc[1]
    assert df['record'].iloc[2] == {'device_id': 'pump-0001', 'ts': '2026-11-04T00:04:00Z', 'sensor': 'flow',
                                    'value': 'NaN'}

def iot2ml(root, *args):
    r = subprocess.run([str(BIN/'iot2ml'), *args], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout

def test_list_and_replay_after_a_fix_with_the_real_cli(served):
    root, reg, post = served
    body = '\n'.join(GOOD.replace('pump-0001', 'pump-0101').replace('00:00:00', f'00:0{i}:00') for i in range(3))
    assert post('gw-1', body + '\n' + GOOD.replace('pump-0001', 'pump-0101').replace('Z"', '"'),
                'application/x-ndjson').status_code == 422
    wait_for(lambda: len(DeadLetters(root/'state'/'deadletter').read()) == 4, what='4 dead letters')
    counts = json.loads(iot2ml(root, 'deadletters', 'list', '--json'))['counts']
    assert [(c['reason'], c['stored'], c['replayed']) for c in counts] == [('device_id:forbidden', 3, 0),
                                                                           ('ts:no_zone', 1, 0)]
    out = iot2ml(root, 'deadletters', 'list', '--reason', 'forbidden')
    assert 'device_id:forbidden' in out and 'no_zone' not in out.split('Newest:')[0]
    assert 'token for gw-1 may not write readings of pump-0101' in out
    # nothing fixed yet
    assert iot2ml(root, 'deadletters', 'replay').startswith("0 of 4 rejected records were stored; 4 rejected again")
    # the fix
    reg.add('pump-0101', gateway_id='gw-1')
    assert iot2ml(root, 'deadletters', 'replay',
                  '--dry-run') == "Dry run: 3 of 4 rejected records would be stored; 1 rejected again (ts:no_zone 1).\n"
    assert iot2ml(root, 'deadletters',
                  'replay').startswith("3 of 4 rejected records were stored; 1 rejected again (ts:no_zone 1).")
    # marked: not twice
    assert iot2ml(root, 'deadletters',
                  'replay') == "0 of 1 rejected records were stored; 1 rejected again (ts:no_zone 1).\n"
    got = Lake(root/'data'/'lake').sql("SELECT device_id, value FROM raw.telemetry WHERE device_id = 'pump-0101'")
    assert len(got) == 3
    counts = json.loads(iot2ml(root, 'deadletters', 'list', '--json', '--since', '2000-01-01'))['counts']
    assert [(c['reason'], c['replayed']) for c in counts] == [('device_id:forbidden', 3), ('ts:no_zone', 0)]
