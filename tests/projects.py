"""Temporary projects for the end-to-end tests, shared by several test files (import them from here, not from a test).

- `Server`: `iot2ml serve` as a real process on a free port of a project folder (the `server` fixture in conftest.py
  adds a device registry); `post`, `lake_rows` and `wait_rows` talk to it.
- `Project`: a project with a device registry and a real Mosquitto, for `iot2ml mqtt` as a process or in-process.
"""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import duckdb, httpx, paho.mqtt.client as mqtt, pandas as pd
from iot2ml.ingest.devices import Registry, ingest_password, write_broker_config
from iot2ml.ingest.state import LatestState
from iot2ml.lake.store import Lake, LakeError
from helpers import free_port, wait_for

BIN = Path(sys.executable).parent

# -- `iot2ml serve` as a process ---------------------------------------------------------------------------------------

SERVE_CONFIG = """[ingest]
flush_seconds = 0.3
max_body_bytes = 262144
max_batch = 2000
rate_limit = 1000
rate_burst = 2000
port = {port}
"""

class Server:
    ("`iot2ml serve` in a subprocess on a free port; `env` adds IOT2ML_* variables; its stdout and stderr go to "
     "serve.log.")
    def __init__(self, root:Path, env:dict|None=None):
        self.root, self.port, self.env = root, free_port(), env or {}
        (root/'iot2ml.toml').write_text(SERVE_CONFIG.format(port=self.port))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.log = open(self.root/'serve.log', 'ab')
        self.proc = subprocess.Popen([str(BIN/'iot2ml'), 'serve'], cwd=self.root, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=os.environ | self.env)
        end = time.monotonic() + 180   # generous: on a loaded 2-core machine starting takes tens of seconds
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                if httpx.get(self.url + '/healthz', timeout=0.5).status_code == 200: return self
            except httpx.HTTPError: pass
            time.sleep(0.05)
        self.stop()   # never leave a server behind
        raise AssertionError(f"server did not start: {(self.root/'serve.log').read_text()[-2000:]}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.log.close()

def add_devices(s:Server) -> Server:
    "Register three pumps (two north, one south), a gateway with two pumps behind it and an admin: `s.tokens`, `s.reg`."
    reg = Registry(s.root/'state'/'registry.sqlite')
    s.tokens = {d: reg.add(d, type='pump', site='north' if d != 'pump-0003' else 'south').token
                for d in ('pump-0001', 'pump-0002', 'pump-0003')}
    s.tokens['gw'] = reg.add('gw-1', kind='gateway').token
    reg.add('pump-0101', gateway_id='gw-1')
    reg.add('pump-0102', gateway_id='gw-1')
    s.tokens['admin'] = reg.add_admin('ops').token
    s.reg = reg
    return s

def post(s, body, token='pump-0001', ct='application/json'):
    ("POST `body` (a str, bytes, or JSON-able value) to /v1/readings with `token` (a device name in `s.tokens`, or a "
     "token).")
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {'Authorization': f"Bearer {s.tokens.get(token, token)}", 'content-type': ct}
    return httpx.post(s.url + '/v1/readings', content=data, headers=headers, timeout=10)

def lake_rows(s, tier='raw'):
    "The readings in the lake's `tier` (an empty frame before the first batch landed)."
    lk = Lake(s.root/'data'/'lake')
    try: return lk.sql(f"SELECT * FROM {tier}.telemetry")
    except Exception: return pd.DataFrame(columns=['device_id', 'ts', 'sensor', 'value'])

def wait_rows(s, n, timeout=10):
    "The raw tier once it holds at least `n` readings."
    def get():
        d = lake_rows(s)
        return d if len(d) >= n else None
    return wait_for(get, timeout, f'{n} readings in the raw tier')

# -- a project with a real Mosquitto, for `iot2ml mqtt` ---------------------------------------------------------------

MQTT_CONFIG = """[ingest]
flush_seconds = 0.3
[mqtt]
host = "{host}"
port = {port}
"""

class Project:
    ("A temp project folder: registry, broker files under state/mosquitto (where `iot2ml mqtt` looks), a broker, "
     "iot2ml.toml.")
    def __init__(self, root:Path, start_broker):
        self.root = root
        self.reg = Registry(root/'state'/'registry.sqlite')
        self.tokens = {d: self.reg.add(d, type='pump').token for d in ('pump-0001', 'pump-0002', 'pump-0003')}
        self.tokens['gw-1'] = self.reg.add('gw-1', kind='gateway').token
        self.reg.add('pump-0101', gateway_id='gw-1')
        bc = write_broker_config(self.reg, root/'state'/'mosquitto', root/'state'/'mosquitto'/'ingest.secret')
        self.broker = start_broker(bc.passwd, bc.acl)
        self.secret = ingest_password(bc.ingest_secret)
        (root/'iot2ml.toml').write_text(MQTT_CONFIG.format(host=self.broker.host, port=self.broker.port))
        self.procs, self.clients = [], []

    # -- the ingester as a process
    def ingester(self, *args, name='ingest'):
        log = open(self.root/f'{name}.log', 'ab')
        p = subprocess.Popen([str(BIN/'iot2ml'), 'mqtt', *args], cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        p.log_path = self.root/f'{name}.log'
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM) -> int:
        if p.poll() is None:
            p.send_signal(sig)
            p.wait(30)
        return p.returncode

    # -- devices
    def device(self, dev, max_inflight=100):
        "A connected MQTT 5 client of device `dev` with its network loop running."
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f'{dev}-{len(self.clients)}', protocol=mqtt.MQTTv5)
        c.username_pw_set(dev, self.tokens[dev])
        c.max_inflight_messages_set(max_inflight)
        ok = threading.Event()
        c.on_connect = lambda *a: ok.set()
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        assert ok.wait(5), self.broker.log_text()
        self.clients.append(c)
        return c

    def publish(self, c, topic, payload):
        "Publish at QoS 1 and wait for the broker's PUBACK."
        info = c.publish(topic, payload if isinstance(payload, (bytes, str)) else json.dumps(payload), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    # -- what landed
    @property
    def lake(self): return Lake(self.root/'data'/'lake')

    def rows(self, where='true', tier='raw') -> pd.DataFrame:
        try: return self.lake.sql(f"SELECT * FROM {tier}.telemetry WHERE {where}")
        except LakeError: return pd.DataFrame(columns=['device_id', 'ts', 'sensor', 'value', 'unit', 'quality'])

    def latest(self): return LatestState(self.root/'state'/'latest.sqlite').latest()

    def probe(self, sensor='probe', writers=None, timeout=60):
        """Publish probe readings until the ingester(s) stored one (by latest state), i.e. are subscribed; with
        `writers`, until each of those writer ids landed one in the lake (for ingesters sharing a subscription)."""
        c = self.device('pump-0003')
        k = 0
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.publish(c, 'iot2ml/pump-0003/telemetry', {'ts': time.time(), 'sensor': sensor, 'value': k})
            k += 1
            time.sleep(0.2)
            if writers is None:
                l = self.latest()
                if ((l['device_id'] == 'pump-0003') & (l['sensor'] == sensor)).any(): return
            elif writers <= set(self.writers(f"sensor = '{sensor}'")['writer']): return
        logs = ''.join(p.log_path.read_text()[-2000:] for p in self.procs)
        raise AssertionError("the ingester did not subscribe: " + logs)

    def writers(self, where='true') -> pd.DataFrame:
        "Raw readings with the writer id (from the batch file name) that landed them."
        glob = self.root/'data'/'lake'/'raw'/'telemetry'/'date=*'/'*.parquet'
        if not list(glob.parent.parent.glob('date=*/*.parquet')): return pd.DataFrame(columns=['writer', 'value'])
        return duckdb.sql(f"""SELECT regexp_extract(filename, '([^/]+)-[0-9]{{12}}\\.parquet$', 1) AS writer, *
                              FROM read_parquet('{glob}', filename=true) WHERE {where}""").df()

    def close(self):
        for c in self.clients:
            c.disconnect()
            c.loop_stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
