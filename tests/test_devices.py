"Device registry and credentials: tokens shown once and stored hashed, authentication, the CLI, and a real Mosquitto."
import json, shutil, stat, subprocess, threading, time, uuid
from datetime import timedelta

import click, pytest
import paho.mqtt.client as mqtt
from click.testing import CliRunner
from helpers import wait_for

from iot2ml.cli.devices import broker_config, devices
from iot2ml.ingest.devices import (INGEST_USER, AuthError, Registry, RegistryError, authenticate, hash_token,
                                   ingest_password,
                             mosquitto_hash, mosquitto_verify, utcnow, write_broker_config)

# -- the registry and authenticate ----------------------------------------------------------------------------------

@pytest.fixture
def reg(tmp_path): return Registry(tmp_path/'registry.sqlite')

def auth_error(reg, token) -> tuple[int, str]:
    with pytest.raises(AuthError) as e: authenticate(reg, token)
    return e.value.status, e.value.message

def test_token_is_stored_hashed_only(reg, tmp_path):
    tokens = [reg.add('pump-0001').token, reg.add('gw-01', kind='gateway').token, reg.add_admin('alice').token,
              reg.rotate('pump-0001').token]
    blob = b''.join(f.read_bytes() for f in tmp_path.glob('registry.sqlite*'))   # the db, its WAL and shm
    for t in tokens:
        assert t.startswith('i2m_') and len(t) == 47
        assert t.encode() not in blob and t[4:].encode() not in blob
        assert hash_token(t).encode() in blob

def test_authenticate_ok_unknown_expired_revoked(reg):
    dev, adm = reg.add('pump-0001', expires_in='1h'), reg.add_admin('alice')
    p = authenticate(reg, dev.token)
    assert (p.subject, p.role, p.devices) == ('pump-0001', 'device', frozenset({'pump-0001'}))
    assert authenticate(reg, adm.token).devices is None
    assert auth_error(reg, None) == (401, "no token; send one as 'Authorization: Bearer <token>' (an admin issues it "
                                          "with iot2ml devices add)")
    assert auth_error(reg, 'i2m_' + 'x' * 43) == (401, "unknown token; ask an admin for a token (iot2ml devices add, "
                                                       "or rotate-token for a lost one)")
    later = Registry(reg.path, now=lambda: utcnow() + timedelta(hours=2))
    status, msg = auth_error(later, dev.token)
    assert status == 401 and msg == (f"token for pump-0001 expired at {dev.expires}; ask an admin for a new one "
                                     f"(iot2ml devices rotate-token pump-0001)")
    reg.revoke('pump-0001')
    assert auth_error(reg, dev.token) == (403, "device pump-0001 is revoked; its tokens no longer work")
    reg.revoke('alice')
    assert auth_error(reg, adm.token) == (403, "token for alice was revoked; ask an admin for a new one (iot2ml "
                                               "devices rotate-token alice)")

def test_rotate_invalidates_the_old_token(reg):
    old = reg.add('pump-0001')
    new = reg.rotate('pump-0001', expires_in='30d')
    assert auth_error(reg, old.token) == (403, "token for pump-0001 was revoked; ask an admin for a new one (iot2ml "
                                               "devices rotate-token pump-0001)")
    assert authenticate(reg, new.token).subject == 'pump-0001'
    assert [t['status'] for t in reg.tokens('pump-0001')] == ['revoked', 'active']

def test_gateway_writes_only_its_devices(reg):
    gw = reg.add('gw-01', kind='gateway')
    for d in ('pump-0001', 'pump-0002'): reg.add(d, gateway_id='gw-01')
    reg.add('pump-0003')
    p = authenticate(reg, gw.token)
    assert p.devices == frozenset({'pump-0001', 'pump-0002'})
    p.check_write('pump-0001')
    with pytest.raises(AuthError) as e: p.check_write('pump-0003')
    assert (e.value.status, e.value.message) == (403, "token for gw-01 may not write readings of pump-0003")
    d = authenticate(reg, reg.rotate('pump-0002').token)
    assert d.may_write('pump-0002') and not d.may_write('pump-0001')
    reg.revoke('pump-0002')
    assert authenticate(reg, gw.token).devices == frozenset({'pump-0001'})

def test_registry_errors_say_what_to_do(reg):
    reg.add('pump-0001')
    cases = {lambda: reg.add('pump-0001'): "device pump-0001 is already registered; for a new token run: iot2ml "
                                           "devices rotate-token pump-0001",
             lambda: reg.add('pump-0002', gateway_id='gw-9'): "gateway gw-9 is not registered; add it first: iot2ml "
                                                              "devices add gw-9 --kind gateway",
             lambda: reg.add('pump-0002', gateway_id='pump-0001'): "pump-0001 is a device, not a gateway; pass a "
                                                                   "gateway's id to --gateway",
             lambda: reg.add(INGEST_USER): "device id 'iot2ml-ingest' is reserved for the MQTT ingester; pick another",
             lambda: reg.add_admin('pump-0001'): "pump-0001 is a registered device; pick another admin name",
             lambda: reg.revoke('pump-001'): f"pump-001 is not in the registry at {reg.path} (did you mean "
                                             f"pump-0001?); see them all with: iot2ml devices list"}
    for f, msg in cases.items():
        with pytest.raises(RegistryError) as e: f()
        assert str(e.value) == msg
    reg.revoke('pump-0001')
    with pytest.raises(RegistryError, match=r"^device pump-0001 was revoked on .*; ids are not reused, pick another$"):
        reg.add('pump-0001')

def test_revocation_reaches_another_process_within_the_cache_ttl(reg):
    tok = reg.add('pump-0001').token
    other = Registry(reg.path, cache_ttl=0.3)   # another worker on the same file, with its own cache
    assert authenticate(other, tok).subject == 'pump-0001'
    reg.revoke('pump-0001')
    def refused():
        try:
            authenticate(other, tok)
            return False
        except AuthError as e: return e.status == 403
    assert wait_for(refused, timeout=10)   # once its cached answer expires

def test_authenticate_is_fast(reg):
    toks = [reg.add(f'pump-{i:04d}').token for i in range(100)]
    cold = Registry(reg.path, cache_ttl=0)
    t = time.perf_counter()
    for tok in toks * 10: authenticate(cold, tok)                # one indexed lookup each
    uncached = (time.perf_counter() - t) / 1000
    t = time.perf_counter()
    for tok in toks * 100: authenticate(reg, tok)
    cached = (time.perf_counter() - t) / 10_000
    assert uncached < 1e-3 and cached < 1e-4, (uncached, cached)

def test_concurrent_writers_wait_instead_of_failing(tmp_path):
    def work(k):
        r = Registry(tmp_path/'registry.sqlite')
        for i in range(20): r.add(f'pump-{k}-{i:02d}')
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert len(Registry(tmp_path/'registry.sqlite').devices()) == 80

def test_mosquitto_hash_format(tmp_path, mosquitto):
    h = mosquitto_hash('i2m_secret', salt=bytes(range(12)))
    assert h == mosquitto_hash('i2m_secret', salt=bytes(range(12))) and h.startswith('$7$101$AAECAwQFBgcICQoL$')
    assert mosquitto_verify('i2m_secret', h) and not mosquitto_verify('i2m_other', h)
    # mosquitto_passwd's own hash, checked with our verifier: the same format both ways
    exe = shutil.which('mosquitto_passwd') or '/usr/bin/mosquitto_passwd'   # comes with the mosquitto package
    subprocess.run([exe, '-c', '-b', str(tmp_path/'pw'), 'pump-0001', 'i2m_secret'], check=True, capture_output=True)
    user, theirs = (tmp_path/'pw').read_text().strip().split(':')
    assert user == 'pump-0001' and theirs.startswith('$7$101$') and mosquitto_verify('i2m_secret', theirs)

# -- the CLI -----------------------------------------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch):
    "Run `iot2ml devices ...` / `iot2ml broker-config` with the project's state in tmp_path."
    monkeypatch.chdir(tmp_path)
    (tmp_path/'iot2ml.toml').write_text('')
    group = click.Group('iot2ml', commands={'devices': devices, 'broker-config': broker_config})
    return lambda *args: CliRunner().invoke(group, [str(a) for a in args])

def test_cli_add_shows_the_token_once(cli, tmp_path):
    r = cli('devices', 'add', 'pump-0001', '--type', 'pump', '--site', 'plant-a', '--expires-in', '30d')
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    tok = lines[-1]
    assert lines[0] == 'Added device pump-0001.'
    assert lines[1].startswith('Token for pump-0001 (it expires at ') and 'will not be shown again' in lines[1]
    assert r.output.count(tok) == 1 and tok.startswith('i2m_')
    assert (tmp_path/'state'/'registry.sqlite').exists()                      # <state_dir>/registry.sqlite
    for cmd in (['devices', 'list'], ['devices', 'list', '--json'], ['devices', 'show', 'pump-0001'],
                ['devices', 'show', 'pump-0001', '--json']):
        out = cli(*cmd).output
        assert tok not in out and hash_token(tok) not in out
    assert authenticate(Registry(tmp_path/'state'/'registry.sqlite'), tok).subject == 'pump-0001'

def test_cli_list_show_revoke_rotate(cli, tmp_path):
    cli('devices', 'add', 'gw-01', '--kind', 'gateway', '--site', 'plant-a')
    cli('devices', 'add', 'pump-0001', '--type', 'pump', '--gateway', 'gw-01')
    admin = cli('devices', 'add-admin', 'alice').output.splitlines()[-1]
    rows = json.loads(cli('devices', 'list', '--json').output)
    assert [(d['device_id'], d['kind'], d['gateway_id'],
             d['status']) for d in rows] == [('gw-01', 'gateway', None, 'active'),
                                             ('pump-0001', 'device', 'gw-01', 'active')]
    table = cli('devices', 'list').output.splitlines()
    assert table[0].split() == ['device_id', 'kind', 'type', 'site', 'gateway_id', 'status', 'created']
    assert table[2].split()[:6] == ['pump-0001', 'device', 'pump', '-', 'gw-01', 'active']
    show = json.loads(cli('devices', 'show', 'gw-01', '--json').output)
    assert show['behind'] == ['pump-0001'] and [t['status'] for t in show['tokens']] == ['active']
    assert json.loads(cli('devices', 'show', 'alice', '--json').output)['admin'] == 'alice'
    r = cli('devices', 'rotate-token', 'pump-0001', '--expires-in', '12h')
    assert r.exit_code == 0 and r.output.startswith('Rotated the token of pump-0001: the old one no longer works.')
    r = cli('devices', 'revoke', 'pump-0001')
    assert r.output == ("Revoked pump-0001: 1 token stopped working. Run `iot2ml broker-config` and reload Mosquitto "
                        "so MQTT refuses it too.\n")
    assert [d['status'] for d in json.loads(cli('devices', 'list', '--json').output)] == ['active', 'revoked']
    assert [d['device_id'] for d in json.loads(cli('devices', 'list', '--active', '--json').output)] == ['gw-01']
    assert authenticate(Registry(tmp_path/'state'/'registry.sqlite'), admin).role == 'admin'

def test_cli_errors_are_one_line_that_says_what_to_do(cli, tmp_path):
    reg = tmp_path/'state'/'registry.sqlite'
    assert cli('devices', 'list').output == (f"Error: no device registry at {reg}; register a device first (iot2ml "
                                             f"devices add ID) or pass --registry\n")
    cli('devices', 'add', 'pump-0001')
    cases = {('devices', 'add', 'pump-0001'): "device pump-0001 is already registered; for a new token run: iot2ml "
                                              "devices rotate-token pump-0001",
             ('devices', 'add', 'pump-0002', '--gateway',
              'gw-1'): "gateway gw-1 is not registered; add it first: iot2ml devices add gw-1 --kind gateway",
             ('devices', 'add', 'pump 2'): "device id 'pump 2' is not valid: use 1-128 letters, digits, '.', '_' or "
                                           "'-', starting with a letter or digit",
             ('devices', 'add', 'pump-0002', '--expires-in',
              '10y'): "--expires-in '10y' is not a duration; write a number and a unit (s, m, h, d or w), e.g. 30d",
             ('devices', 'show', 'pump-0010'): f"pump-0010 is not in the registry at {reg} (did you mean pump-0001?); "
                                               f"see them all with: iot2ml devices list",
             ('devices', 'rotate-token',
              'bob'): f"bob is not in the registry at {reg}; see them all with: iot2ml devices list"}
    for args, msg in cases.items():
        r = cli(*args)
        assert (r.exit_code, r.output) == (1, f"Error: {msg}\n"), args
    (tmp_path/'iot2ml.toml').write_text('[simulate]\npumsp = 3\n')
    r = cli('devices', 'list')
    assert r.exit_code == 1
    assert r.output.startswith("Error: unknown key 'simulate.pumsp'")
    assert 'Traceback' not in r.output

def commands():
    yield ('broker-config',), broker_config
    yield ('devices',), devices
    for name, c in devices.commands.items(): yield ('devices', name), c

@pytest.mark.parametrize('path', [p for p, _ in commands()], ids=' '.join)
def test_every_command_has_help_with_an_example(cli, path):
    r = cli(*path, '--help')
    assert r.exit_code == 0 and 'Example' in r.output and f'iot2ml {" ".join(path)}' in r.output, r.output
    if path != ('devices',): assert '--registry' in r.output

def test_cli_broker_config(cli, tmp_path):
    cli('devices', 'add', 'pump-0001')
    r = cli('broker-config')
    d = tmp_path/'state'/'mosquitto'
    assert r.output.splitlines() == [
        f"Wrote {d/'passwd'} (1 devices and gateways, and {INGEST_USER}) and {d/'acl'}.",
        "Add these lines to mosquitto.conf (with allow_anonymous false), then reload Mosquitto:",
        f"password_file {d/'passwd'}", f"acl_file {d/'acl'}",
        "max_queued_messages 0   # keep everything devices send while the ingester is down (the default, 1000, drops "
        "the rest)",
        f"The ingester connects as {INGEST_USER} with the password in {d/'ingest.secret'}."]
    for f in ('passwd', 'acl', 'ingest.secret'): assert stat.S_IMODE((d/f).stat().st_mode) == 0o600
    secret = (d/'ingest.secret').read_text()
    cli('broker-config', '--out', tmp_path/'etc')
    # the ingester's password is kept
    assert (d/'ingest.secret').read_text() == secret and (tmp_path/'etc'/'acl').exists()

# -- a real Mosquitto ------------------------------------------------------------------------------------------------

# the `mosquitto` and `mqtt_broker` fixtures are in conftest.py (tests/test_mqtt.py uses them too)

def connect(broker, user, password, timeout=5.0):
    "A connected MQTT 5 client with its network loop running, or the reason code the broker refused it with."
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f'{user}-{uuid.uuid4().hex[:8]}', protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    got, done = {}, threading.Event()
    c.on_connect = lambda client, userdata, flags, rc, props: (got.setdefault('rc', rc), done.set())
    c.connect(broker.host, broker.port)
    deadline = time.monotonic() + timeout
    while not done.is_set() and time.monotonic() < deadline: c.loop(0.02)   # no network thread until accepted
    assert done.is_set(), f"no CONNACK from the broker; its log:\n{broker.log_text()}"
    if got['rc'].is_failure:
        c.disconnect()
        return got['rc']
    c.loop_start()
    return c

def publish(c, topic, payload):
    "Publish at QoS 1 and return the PUBACK's reason code."
    got, done = {}, threading.Event()
    c.on_publish = lambda client, userdata, mid, rc, props: (got.setdefault(mid, rc), done.set())
    info = c.publish(topic, payload, qos=1)
    assert done.wait(5)
    return got[info.mid]

def subscribe(c, topic) -> list:
    "Subscribe at QoS 1; return the list that received (topic, payload) pairs are appended to."
    got, done, subacks = [], threading.Event(), []
    c.on_message = lambda client, userdata, m: got.append((m.topic, m.payload.decode()))
    c.on_subscribe = lambda client, userdata, mid, rcs, props: (subacks.extend(rcs), done.set())
    c.subscribe(topic, qos=1)
    assert done.wait(5)
    assert not subacks[0].is_failure, f"{topic}: {subacks[0]}"
    return got

def refused(broker, user, password) -> str|None:
    "The reason the broker refuses `user` with `password`, or None if it accepts (the client is then closed)."
    c = connect(broker, user, password)
    if not isinstance(c, mqtt.Client): return c.getName()
    c.disconnect()
    c.loop_stop()

REFUSED = 'Not authorized'   # Mosquitto 2's MQTT 5 CONNACK for a wrong user name or password

def test_a_device_publishes_only_on_its_own_topic(tmp_path, mqtt_broker):
    reg = Registry(tmp_path/'registry.sqlite')
    a, b = reg.add('pump-a'), reg.add('pump-b')
    gw, c = reg.add('gw-01', kind='gateway'), reg.add('pump-c', gateway_id='gw-01')
    bc = write_broker_config(reg, tmp_path/'mq', tmp_path/'mq'/'ingest.secret')
    broker = mqtt_broker(bc.passwd, bc.acl)
    ingest = connect(broker, INGEST_USER, ingest_password(bc.ingest_secret))
    received = subscribe(ingest, '$share/ingest/iot2ml/+/telemetry')      # as the ingesters will, N of them sharing
    dev_a, gateway = connect(broker, 'pump-a', a.token), connect(broker, 'gw-01', gw.token)
    assert publish(dev_a, 'iot2ml/pump-b/telemetry', 'a as b').getName() == 'Not authorized'
    assert publish(dev_a, 'iot2ml/pump-a/telemetry', 'hello').getName() == 'Success'
    assert publish(gateway, 'iot2ml/pump-a/telemetry', 'gw as a').getName() == 'Not authorized'
    assert publish(gateway, 'iot2ml/pump-c/telemetry', 'via gateway').getName() == 'Success'
    assert publish(dev_a, 'iot2ml/pump-a/telemetry', 'marker').getName() == 'Success'   # sent last: arrives last
    assert wait_for(lambda: received and received[-1] == ('iot2ml/pump-a/telemetry', 'marker'))
    assert received == [('iot2ml/pump-a/telemetry', 'hello'), ('iot2ml/pump-c/telemetry', 'via gateway'),
                        ('iot2ml/pump-a/telemetry', 'marker')]
    # a device reads nothing: Mosquitto may grant its subscription, but delivers no message it may not read
    try: snooped = subscribe(dev_a, 'iot2ml/+/telemetry')
    except AssertionError as e:
        assert 'Not authorized' in str(e)
        snooped = []
    dev_b = connect(broker, 'pump-b', b.token)
    assert publish(dev_b, 'iot2ml/pump-b/telemetry', 'from b').getName() == 'Success'
    assert wait_for(lambda: len(received) == 4) and received[-1] == ('iot2ml/pump-b/telemetry', 'from b')
    # a round trip on pump-a's own connection: its PUBACK comes after any message the broker had queued for it
    assert publish(dev_a, 'iot2ml/pump-a/telemetry', 'after b').getName() == 'Success'
    assert snooped == []
    for c_ in (ingest, dev_a, dev_b, gateway):
        c_.disconnect()
        c_.loop_stop()
    assert refused(broker, 'pump-a', b.token) == REFUSED and refused(broker, 'pump-a', a.token + 'x') == REFUSED
    assert refused(broker, 'pump-a', None) == REFUSED
    # revoke A and rotate C, re-run broker-config, reload: A is refused, C only with its new token
    reg.revoke('pump-a')
    c2 = reg.rotate('pump-c')
    write_broker_config(reg, tmp_path/'mq', tmp_path/'mq'/'ingest.secret')
    broker.reload()
    wait_for(lambda: refused(broker, 'pump-a', a.token) == REFUSED, what=lambda: f"the refusal:\n{broker.log_text()}")
    assert refused(broker, 'pump-c', c.token) == REFUSED
    ingest = connect(broker, INGEST_USER, ingest_password(bc.ingest_secret))      # its password survives the rewrite
    received = subscribe(ingest, 'iot2ml/+/telemetry')
    dev_c = connect(broker, 'pump-c', c2.token)
    assert publish(dev_c, 'iot2ml/pump-c/telemetry', 'rotated').getName() == 'Success'
    assert wait_for(lambda: received == [('iot2ml/pump-c/telemetry', 'rotated')])
    for c_ in (ingest, dev_c):
        c_.disconnect()
        c_.loop_stop()
