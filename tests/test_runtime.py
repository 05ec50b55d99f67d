"""Operational state on disk (issue 8, defect 10): private permissions, and one spool per process by default, so
`iot2ml serve` and `iot2ml mqtt` run side by side without `--writer-id`. Real processes, a real Mosquitto."""
import json, stat, subprocess
from pathlib import Path
import httpx
from conftest import BIN
from helpers import free_port, wait_for
from projects import Project, Server
from iot2ml.ingest.devices import Registry

def _healthy(url:str) -> bool:
    try: return httpx.get(url + '/healthz', timeout=0.5).status_code == 200
    except httpx.HTTPError: return False

def mode(p:Path) -> str: return oct(stat.S_IMODE(p.stat().st_mode))

def test_state_files_are_private(tmp_path):
    "Folders 0750, state files 0640, the registry (token hashes) 0600, whatever the umask."
    s = Server(tmp_path)
    tok = Registry(tmp_path/'state'/'registry.sqlite').add('pump-0001').token
    s.start()
    try:
        r = httpx.post(s.url + '/v1/readings', headers={'Authorization': f'Bearer {tok}'}, timeout=10,
                       content=json.dumps([{'device_id': 'pump-0001', 'ts': '2026-01-01T00:00:00Z', 'sensor': 'flow',
                                            'value': 1.5},
                                           {'device_id': 'pump-0001', 'ts': '2026-01-01T00:00:01Z', 'sensor': 'flow',
                                            'value': 'x'}]))
        assert r.status_code == 200 and r.json()['accepted'] == 1, r.text
        state = tmp_path/'state'
        wait_for(lambda: (state/'latest.sqlite').exists() and list((state/'deadletter').glob('*')),
                 what='latest state and a dead letter')
    finally: s.stop()
    assert mode(state) == '0o750'
    assert mode(state/'registry.sqlite') == '0o600'
    for f in state.glob('registry.sqlite-*'): assert mode(f) == '0o600', f
    assert mode(state/'latest.sqlite') == '0o640'
    spool = [p for p in (state/'spool').rglob('*')]
    assert spool, 'the spool folder is empty'
    for p in [state/'spool', *spool]:
        assert mode(p) in ('0o750', '0o640') and not stat.S_IMODE(p.stat().st_mode) & 0o007, (p, mode(p))
    dead = list((state/'deadletter').rglob('*'))
    assert dead
    for p in [state/'deadletter', *dead]: assert not stat.S_IMODE(p.stat().st_mode) & 0o007, (p, mode(p))

def test_serve_and_mqtt_run_side_by_side_with_default_writer_ids(tmp_path, mqtt_broker):
    "Each process picks its own writer id (http-<port>, mqtt-<client id>): both start, both land readings."
    proj = Project(tmp_path, mqtt_broker)   # its iot2ml.toml: [ingest] flush_seconds, [mqtt] the broker
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([str(BIN/'iot2ml'), 'serve', '--port', str(port)], cwd=tmp_path,
                             stdout=open(tmp_path/'serve.log', 'ab'), stderr=subprocess.STDOUT)
    proj.procs.append(serve)
    try:
        wait_for(lambda: _healthy(url), timeout=90, what='iot2ml serve to answer /healthz')
        ing = proj.ingester()
        proj.probe()   # the ingester subscribed and stored a reading: it did not refuse to start
        assert ing.poll() is None, ing.log_path.read_text()[-2000:]
        r = httpx.post(url + '/v1/readings', headers={'Authorization': f"Bearer {proj.tokens['pump-0001']}"},
                       timeout=10,
                       content=json.dumps({'device_id': 'pump-0001', 'ts': '2026-01-01T00:00:00Z', 'sensor': 'flow',
                                           'value': 2.5}))
        assert r.status_code == 200, r.text
        both = {f'http-{port}', 'mqtt-iot2ml-ingest-0'}
        spools = wait_for(lambda: {p.name for p in (tmp_path/'state'/'spool').iterdir()} >= both
                          and {p.name for p in (tmp_path/'state'/'spool').iterdir()}, what='both spools')
        assert spools == {f'http-{port}', 'mqtt-iot2ml-ingest-0'}
        writers = wait_for(lambda: set(proj.writers()['writer']) >= both and set(proj.writers()['writer']),
                           what='batches of both writers in the lake')
        assert writers == {f'http-{port}', 'mqtt-iot2ml-ingest-0'}
    finally:
        proj.close()
