"""The MQTT face of iot2ml: `iot2ml mqtt` subscribes to a broker and stores what devices publish.

Hand-written (a protocol client and a subscriber loop). Devices publish on `iot2ml/<device_id>/telemetry` one
reading or a batch (a list, or `{"readings": [...]}`), long or wide, as JSON; the broker's ACL (written by
`iot2ml broker-config`) lets a device publish only on its own topic, and a reading whose `device_id` differs from
the topic's is rejected here too.

Delivery. The ingester speaks MQTT 5 itself (a small client in this module, not paho: paho reads a packet with
three or more `recv` calls and sends each acknowledgement with its own write, which capped it near 30k messages/s
on two cores). It connects with a fixed client id, `clean_start=False` and a session expiry of a week, so what
devices publish while it is down is queued by the broker and arrives after a restart; it subscribes at QoS 1.
A message is acknowledged (PUBACK) only after its readings are fsynced in the spool (its rejected records are
handed to the dead-letter store, which writes them within a fraction of a second); a message that arrived on a
connection that has since dropped is never acknowledged (the broker resends it on the new one). CONNECT announces a
Receive Maximum (default 10,000): MQTT 5 lets the client, not the broker's `max_inflight_messages` (20 by default),
bound how many unacknowledged messages the broker sends ahead, and that window is what lets one fsync cover
thousands of messages.

The broker must keep what it holds for the ingester: Mosquitto drops messages for a client once more than
`max_queued_messages` (1,000 by default) wait for it, while it is down or behind, even though it acknowledged
them to the device. Set `max_queued_messages 0` (no limit) or a large number in mosquitto.conf.

Pipeline. A network thread reads the socket in large chunks and cuts them into packets; a worker thread takes
batches of up to `batch_messages` messages or `batch_bytes` of payload (waiting at most `batch_seconds` for a batch
to fill), parses and validates them, and appends them to the spool without waiting for the fsync, so the next batch
is parsed while the previous one is being fsynced; acknowledgements go out in order as the fsyncs complete, one
write per batch. Batches stay small (1 MiB): parsing a few thousand messages at a time kept orjson's objects in
cache: orjson parsed 1.7 times as fast as in batches of 65 MB (5,000 messages of 100 readings).

Dead letters: a line per message with rejected records, `source` = `mqtt:<topic>`, each record's position in its
message, its reasons, and the record as sent (or the payload text, when it is not JSON). A batch's dead letters go to
the store in one call and are written by its background thread, so a flood of bad messages costs about what good
ones cost: their messages are checked together in one exact pass (not one pass per message) and no fsync waits per
message. A payload that is not JSON, not UTF-8, nested deeper than 1,024 levels or has a lone surrogate is
dead-lettered with that reason.

Fast path. For the common case (objects with string ids, numeric values and ISO 8601 or epoch times) a batch is
checked column by column with Arrow and numpy, without pandas and without a Python object per reading beyond
the parsed JSON. Any message with a record the fast checks do not pass goes whole through the exact path
(`iot2ml.ingest.parse.from_records` + `check_parsed`, as the HTTP API), which writes the reasons; so results, including
each error message, are the same as over HTTP with one message as one body. Duplicates `(device, sensor, ts)` are
rejected within a message, not across messages (a resent message is kept; the processed tier collapses it).

Backpressure. When the spool is full (`SpoolFull`) the worker holds the prepared batch unacknowledged and retries;
the network thread stops reading once `max_pending_messages` or `max_pending_bytes` wait, so TCP pushes back and
the broker stops at the Receive Maximum. Nothing unacknowledged is lost: the broker keeps it for the session.

Scale-out: with `shared_group`, MQTT 5 shared subscriptions (`$share/<group>/iot2ml/+/telemetry`) split one stream
over several ingesters, each with its own client id, spool and writer id.
"""
from __future__ import annotations
import collections, json, logging, re, select, socket, struct, threading, time
from itertools import repeat

import numpy as np, orjson, pandas as pd, pyarrow as pa, pyarrow.compute as pc

from iot2ml.errors import ConfigError, Iot2mlError
from iot2ml.ingest.routing import Outcome, apply_transform
from iot2ml.lake.store import as_raw
from iot2ml.ingest.parse import check_parsed, from_records
from iot2ml.schema import ID_CHARS, LONG_SCHEMA, MAX_AHEAD, MIN_TS, RecordError, TS_TYPE, epoch_to_us
from iot2ml.serve.runtime import Service
from iot2ml.ingest.spool import SpoolFull

__all__ = ['MqttIngester', 'TOPIC', 'MqttRefused']

log = logging.getLogger('iot2ml.serve.mqtt')
TOPIC = 'iot2ml/+/telemetry'

# ---------------------------------------------------------------------------------------------- MQTT 5 packets
_REASONS = {0x80: 'Unspecified error', 0x81: 'Malformed Packet', 0x82: 'Protocol Error',
            0x84: 'Unsupported Protocol Version', 0x85: 'Client Identifier not valid',
            0x86: 'Bad User Name or Password', 0x87: 'Not authorized', 0x88: 'Server unavailable',
            0x89: 'Server busy', 0x8A: 'Banned', 0x8B: 'Server shutting down', 0x8D: 'Keep Alive timeout',
            0x8E: 'Session taken over', 0x8F: 'Topic Filter invalid', 0x93: 'Receive Maximum exceeded',
            0x95: 'Packet too large', 0x97: 'Quota exceeded', 0x9C: 'Use another server', 0x9D: 'Server moved',
            0x9F: 'Connection rate exceeded'}
_PINGREQ, _DISCONNECT = b'\xc0\x00', b'\xe0\x00'
_PROP_KIND = {0x01: 1, 0x02: 4, 0x03: 's', 0x08: 's', 0x09: 'b', 0x0B: 'v', 0x11: 4, 0x12: 's', 0x13: 2, 0x15: 's',
              0x16: 'b', 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: 's', 0x1C: 's', 0x1F: 's', 0x21: 2, 0x22: 2, 0x23: 2,
              0x24: 1, 0x25: 1, 0x26: 'p', 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
_ACK = [bytes((0x40, 2, p >> 8, p & 255)) for p in range(65536)]   # PUBACK (success) for each packet id

class MqttRefused(Iot2mlError, ConnectionError):
    "The broker refused the connection or the subscription (bad credentials, ACL, client id); the message says why."

class _ProtocolError(ConnectionError): pass

def _varint(n:int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 127, n >> 7
        out.append(b | 128 if n else b)
        if not n: return bytes(out)

def _read_varint(b:bytes, i:int) -> tuple[int, int]:
    v = mult = 0
    for k in range(4):
        x = b[i + k]
        v |= (x & 127) << mult
        mult += 7
        if x < 128: return v, i + k + 1
    raise _ProtocolError("malformed variable-length integer from the broker")

def _s(x:str|bytes) -> bytes:
    x = x.encode() if isinstance(x, str) else x
    return struct.pack('>H', len(x)) + x

def _packet(first:int, body:bytes) -> bytes: return bytes((first,)) + _varint(len(body)) + body

def _props(b:bytes, i:int) -> tuple[dict, int]:
    "Decode an MQTT 5 property block at `i`: ({id: value}, index after it)."
    n, i = _read_varint(b, i)
    end, out = i + n, {}
    while i < end:
        pid = b[i]
        i += 1
        kind = _PROP_KIND.get(pid)
        if kind is None: raise _ProtocolError(f"unknown MQTT 5 property 0x{pid:02x} from the broker")
        if kind in (1, 2, 4):
            v = int.from_bytes(b[i:i + kind], 'big')
            i += kind
        elif kind == 'v': v, i = _read_varint(b, i)
        elif kind == 'p':
            l1 = int.from_bytes(b[i:i + 2], 'big')
            k = b[i + 2:i + 2 + l1]
            i += 2 + l1
            l2 = int.from_bytes(b[i:i + 2], 'big')
            v = (k.decode(), b[i + 2:i + 2 + l2].decode())
            i += 2 + l2
        else:
            ln = int.from_bytes(b[i:i + 2], 'big')
            v = b[i + 2:i + 2 + ln]
            i += 2 + ln
            if kind == 's': v = v.decode('utf-8', 'replace')
        out[pid] = v
    return out, end

def _reason(code:int, props:dict|None=None) -> str:
    r = _REASONS.get(code, f'reason code 0x{code:02x}')
    return r + (f" ({props[0x1F]})" if props and 0x1F in props else '')

def _read_connack(sock:socket.socket) -> tuple[bytes, int, int]:
    "Read until the first packet (CONNACK: nothing else can come before it) is whole: (data, body start, body length)."
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the broker closed the connection before CONNACK (is it an MQTT 5 broker?)")
        data += chunk
        if len(data) >= 2:
            try: rl, i = _read_varint(data, 1)
            except IndexError: continue
            if len(data) >= i + rl: return data, i, rl

# ---------------------------------------------------------------------------------------------- the fast path
_ID = re.compile(ID_CHARS)   # and at most `Limits.max_id_length` long
_DUP_RE = re.compile(r'duplicates record (\d+)')
_META = {'device_id', 'ts', 'unit', 'quality'}
_MIN_US = MIN_TS.value // 1000
_AHEAD_US = MAX_AHEAD.value // 1000
_NUMT = frozenset((int, float))
_UNITT = frozenset((str, type(None)))
_QT = frozenset((int, type(None)))
_NONET = frozenset((type(None),))
_INTT = frozenset((int,))
_TS_US = pa.timestamp('us', tz='UTC')

def _floats(col:list) -> np.ndarray:
    "Numbers as float64 (an integer beyond float64's range becomes inf, which fails the finiteness check)."
    try: return np.array(col, dtype='float64')
    except OverflowError: return np.array([float(v) if abs(v) < 1e308 else np.inf for v in col], dtype='float64')

_ISO_DAY = re.compile(r'\d{4}-\d\d-\d\d').match   # how every ISO 8601 time Arrow reads begins

def _cast_ts(strs:list) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 strings with a zone to UTC microseconds with Arrow; (us, ok). A string that does not begin with a date
    is not tried; around other unparsable ones the array is halved down to runs of 64 (not 1: a flood of bad times
    took two failing Arrow casts, ~1 ms each, per message), which go whole to the exact path."""
    out, ok = np.zeros(len(strs), 'int64'), np.zeros(len(strs), bool)
    dated = [k for k, s in enumerate(strs) if _ISO_DAY(s)]
    if len(dated) < len(strs):
        if dated:
            u, o = _cast_ts([strs[k] for k in dated])
            out[dated], ok[dated] = u, o
        return out, ok
    def go(lo, hi):
        if lo >= hi: return
        try:
            out[lo:hi] = pa.array(strs[lo:hi], pa.string()).cast(_TS_US).cast(pa.int64()).to_numpy(zero_copy_only=False)
            ok[lo:hi] = True
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            if hi - lo > 64:
                mid = (lo + hi) // 2
                go(lo, mid)
                go(mid, hi)  # 64 or fewer: all to the exact path
    go(0, len(strs))
    return out, ok

# The fast path's column checks: each takes one column of a batch (a list, a value per reading) and returns what it
# makes of it with a mask of the readings that fail (their messages take the exact path, which names the reason).
def _flags(col:list, okf) -> np.ndarray:
    "The mask of the values of `col` for which `okf` is false."
    bad = np.zeros(len(col), bool)
    for k, x in enumerate(col):
        if not okf(x): bad[k] = True
    return bad

def _sensors_bad(sensor:list, known:set, max_len:int) -> np.ndarray:
    "Sensor names that are not strings matching the id pattern; `known` caches the names that passed."
    try: ok = known.issuperset(sensor)
    except TypeError: ok = False   # an unhashable value
    if ok: return np.zeros(len(sensor), bool)
    for sn in set(x for x in sensor if type(x) is str and x not in known):
        if len(sn) <= max_len and _ID.fullmatch(sn) and len(known) < 100_000: known.add(sn)
    return _flags(sensor, lambda x: type(x) is str and x in known)

def _values(value:list) -> tuple[np.ndarray, np.ndarray]:
    "(float64 values, bad): values that are not finite numbers fail."
    ok = set(map(type, value)) <= _NUMT
    bad = np.zeros(len(value), bool) if ok else _flags(value, lambda v: type(v) in _NUMT)
    vals = _floats([v if type(v) in _NUMT else 0.0 for v in value] if bad.any() else value)
    with np.errstate(invalid='ignore', over='ignore'): bad |= ~np.isfinite(vals)
    return vals, bad

def _epochs(x:list) -> tuple[np.ndarray, np.ndarray]:
    "Epoch numbers (s, ms, us or ns) to UTC microseconds: (us, ok)."
    f = _floats(x)
    ok = np.isfinite(f)
    us = np.zeros(len(x), 'int64')
    us[ok] = epoch_to_us(f[ok])
    return us, ok

def _mixed_times(ts:list) -> tuple[np.ndarray, np.ndarray]:
    "(us, bad) of a column mixing ISO 8601 strings, epoch numbers and other values (which fail)."
    us, bad = np.zeros(len(ts), 'int64'), np.zeros(len(ts), bool)
    si = [k for k, t in enumerate(ts) if type(t) is str]
    ni = [k for k, t in enumerate(ts) if type(t) in _NUMT]
    bad[[k for k, t in enumerate(ts) if type(t) not in _NUMT and type(t) is not str]] = True
    if si:
        u_, ok = _cast_ts([ts[k] for k in si])
        us[si] = u_
        bad[np.array(si)[~ok]] = True
    if ni:
        u_, ok = _epochs([ts[k] for k in ni])
        ni = np.array(ni)
        us[ni[ok]] = u_[ok]
        bad[ni[~ok]] = True
    return us, bad

def _times(ts:list, now_us:int) -> tuple[np.ndarray, np.ndarray]:
    """(UTC epoch us, bad): ISO 8601 with a zone (Arrow parses them; naive and odd forms fail to the exact path) or
    epoch numbers, from `MIN_TS` to `MAX_AHEAD` past `now_us`."""
    tt = set(map(type, ts))
    if tt == {str}:
        us, ok = _cast_ts(ts)
        bad = ~ok
    elif tt <= _NUMT:
        us, ok = _epochs(ts)
        bad = ~ok
    else: us, bad = _mixed_times(ts)
    bad |= (us < _MIN_US) | (us > now_us + _AHEAD_US)
    return us, bad

def _units(unit:list, max_len:int) -> tuple[pa.Array, np.ndarray]:
    "(units as an Arrow string array, bad): a unit is a string of at most `max_len` characters, or None."
    ok = set(map(type, unit)) <= _UNITT
    bad = np.zeros(len(unit), bool) if ok else _flags(unit, lambda u: type(u) in _UNITT)
    units = pa.array(unit if ok else [u if type(u) is str else None for u in unit], pa.string())
    if units.null_count < len(unit):
        bad |= pc.fill_null(pc.greater(pc.utf8_length(units), max_len), False).to_numpy(zero_copy_only=False)
    return units, bad

def _qualities(quality:list) -> tuple[np.ndarray, np.ndarray]:
    "(quality as uint8, bad): an integer quality, or None for 0."
    qt = set(map(type, quality))
    if qt == _NONET: return np.zeros(len(quality), 'uint8'), np.zeros(len(quality), bool)
    bad = np.zeros(len(quality), bool) if qt <= _QT else _flags(quality, lambda v: type(v) in _QT)
    try: qa = np.array(quality, dtype='int64') if qt == _INTT else None
    except OverflowError: qa = None
    if qa is None:
        qa = np.array([v if type(v) is int and -1 < v < 256 else (0 if v is None else -1) for v in quality], 'int64')
    bad |= (qa < 0) | (qa > 255)   # the exact path says why
    return qa.clip(0, 255).astype('uint8'), bad

def _duplicated(ow:np.ndarray, sens:pa.Array, us:np.ndarray, messages:int) -> list:
    "The messages (`ow`: of each reading) with several readings of one sensor at one time: the exact path names them."
    multi = np.bincount(ow, minlength=messages)[ow] > 1
    if not multi.any(): return []
    k = np.flatnonzero(multi)
    code = sens.dictionary_encode().indices.to_numpy(zero_copy_only=False)[k]
    o = np.lexsort((us[k], code, ow[k]))
    ko, kc, ku = ow[k][o], code[o], us[k][o]
    same = (ko[1:] == ko[:-1]) & (kc[1:] == kc[:-1]) & (ku[1:] == ku[:-1])
    return np.unique(ko[1:][same]).tolist() if same.any() else []

# The fast path's record checks: which records can go column by column at all.
def _objects(recs:list, owner:list, slow:set) -> tuple[list, list]:
    "The records that are JSON objects (and their owners); a record that is not sends its message to `slow`."
    if set(map(type, recs)) == {dict}: return recs, owner
    slow.update(o for r, o in zip(recs, owner) if type(r) is not dict)
    keep = [k for k, r in enumerate(recs) if type(r) is dict]
    return [recs[k] for k in keep], [owner[k] for k in keep]

def _check_devices(recs:list, owner:list, tdev:list, topics:list, slow:set) -> None:
    "A record's device is its topic's (injected when absent); any other value, or an invalid topic id, goes to `slow`."
    dev = list(map(dict.get, recs, repeat('device_id'), tdev))
    if dev != tdev or not all(topics[o][2] for o in set(owner)):
        slow.update(o for d, t, o in zip(dev, tdev, owner) if d != t or not topics[o][2])

def _wide(recs:list, owner:list, tdev:list, slow:set, max_sensors:int) -> tuple[list, ...]:
    "The columns of wide records, a reading per sensor key; a record without sensors or with too many goes to `slow`."
    rowner, rdev, sensor, value, ts, unit, quality = [], [], [], [], [], [], []
    for r, o, d in zip(recs, owner, tdev):
        if 'sensor' in r or 'value' in r: keys = ((r.get('sensor'), r.get('value')),)
        else:
            keys = [(k, v) for k, v in r.items() if k not in _META]
            if not keys or len(keys) > max_sensors:
                slow.add(o)
                continue
        t, u, q = r.get('ts'), r.get('unit'), r.get('quality')
        for sn, v in keys:
            rowner.append(o)
            rdev.append(d)
            sensor.append(sn)
            value.append(v)
            ts.append(t)
            unit.append(u)
            quality.append(q)
    return rowner, rdev, sensor, value, ts, unit, quality

def _columns(recs:list, owner:list, tdev:list, slow:set, max_sensors:int) -> tuple[list, ...]:
    "(owner, device, sensor, value, ts, unit, quality) per reading; long records keep `owner` and `tdev` themselves."
    if all(map(dict.__contains__, recs, repeat('sensor'))) or all('sensor' in r or 'value' in r for r in recs):
        get = lambda key: list(map(dict.get, recs, repeat(key)))
        return owner, tdev, get('sensor'), get('value'), get('ts'), get('unit'), get('quality')
    return _wide(recs, owner, tdev, slow, max_sensors)

def _long_table(devs:pa.Array, us:np.ndarray, sens:pa.Array, vals:np.ndarray, units:pa.Array, q:np.ndarray) -> pa.Table:
    "The checked columns as a table of `LONG_SCHEMA`."
    return pa.table({'device_id': devs, 'ts': pa.array(us, pa.int64()).cast(pa.timestamp('us')).cast(TS_TYPE),
                     'sensor': sens, 'value': pa.array(vals, pa.float64()), 'unit': units,
                     'quality': pa.array(q, pa.uint8())}, schema=LONG_SCHEMA)

_MAX_NESTING = 1024   # orjson reads JSON nested this deep; deeper payloads are refused
_FIX = 'publish a JSON reading, a list of readings or {"readings": [...]}'

class _BadPayload(ValueError):
    "A payload that is not a JSON reading; the message says what is wrong and what to publish."

def _lone_surrogate(obj) -> bool:
    "Whether a string (or key) in `obj` holds a lone surrogate, which the standard library's JSON reader lets through."
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try: v.encode('utf-8')
                except UnicodeEncodeError: return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list): stack.extend(v)
    return False

def _lenient(payload:bytes, topic:str, err:Exception):
    """A payload orjson refused (`err`), read by the standard library, which reads NaN and Infinity (they then fail per
    record); `_BadPayload` saying what is wrong if it is not JSON, nested too deep, not UTF-8, or has a lone
    surrogate."""
    try: obj = json.loads(payload)
    except RecursionError:
        raise _BadPayload(f"the payload on {topic} is nested deeper than {_MAX_NESTING} levels; {_FIX}") from None
    except UnicodeDecodeError:
        raise _BadPayload(f"the payload on {topic} is not valid UTF-8 text; {_FIX}, encoded as UTF-8") from None
    except ValueError: raise _BadPayload(f"payload on {topic} is not valid JSON ({err}); {_FIX}") from None
    if _lone_surrogate(obj):
        raise _BadPayload(f"the payload on {topic} has a lone surrogate (a \\ud800-\\udfff escape without its pair), "
                          "which is not valid UTF-8 text; send ids, names and units as UTF-8 text")
    return obj

# The exact path's steps (the records of the messages the fast checks did not pass, as HTTP bodies are checked)
def _gather(batch:list, items:list, single:dict) -> tuple[list, list, list]:
    "The records of messages `batch`: (records, the message of each, its position in its message)."
    rr, rown, rloc = [], [], []
    for i in batch:
        its = items[i] if items[i] is not None else [single[i]]
        rr.extend(its)
        rown.extend([i] * len(its))
        rloc.extend(range(len(its)))
    return rr, rown, rloc

def _claimed_devices(rr:list, rown:list, topics:list) -> dict[int, str]:
    """Give records without a device_id their topic's (in `rr`); return, per record that claims another device, why
    it is rejected."""
    mism = {}
    for j, (r, o) in enumerate(zip(rr, rown)):
        tdev = topics[o][1]
        if isinstance(r, dict):
            if 'device_id' not in r and tdev: rr[j] = r = {**r, 'device_id': tdev}
            elif tdev and isinstance(r.get('device_id'), str) and r['device_id'] != tdev:
                mism[j] = (f"published on {topics[o][0]} but claims device {r.get('device_id')!r}; "
                           "publish on iot2ml/<its device_id>/telemetry")
    return mism

def _dup(e:RecordError):
    "The match naming the record that `e` duplicates, or None."
    return _DUP_RE.search(e.message) if 'duplicates record' in e.message else None

def _resent(errs:list, rown:list) -> set:
    "The messages with a reading that duplicates another message's (a resent message): they go again, alone."
    return {rown[e.index] for e in errs if (m := _dup(e)) and rown[int(m[1])] != rown[e.index]}

def _per_message(errs:list, rown:list, rloc:list, again:set) -> tuple[dict, set]:
    "(errors per message, numbered within it, sorted; the rejected records), leaving out the messages to go `again`."
    errors, bad = {}, set()
    for e in errs:
        if rown[e.index] in again: continue
        bad.add(e.index)
        msg = _DUP_RE.sub(lambda mm: f"duplicates record {rloc[int(mm[1])]}", e.message) if _dup(e) else e.message
        errors.setdefault(rown[e.index], []).append(RecordError(rloc[e.index], e.field, msg))
    for es in errors.values(): es.sort(key=lambda e: e.index)
    return errors, bad

def _transform_errors(df:pd.DataFrame, terrs:list, errors:dict) -> set:
    """The readings a transform failed for: they go nowhere and are dead-lettered per device with their values (added
    to `errors`)."""
    for e in terrs:
        row = df.iloc[e.index]
        why = f"{e.message} (reading {row['sensor']} at {row['ts']})"
        errors.setdefault(('transform', row['device_id']), []).append(RecordError(0, e.field, why))
    return {e.index for e in terrs}

class _Batch:
    "What the worker made of a batch of messages: tables per destination, the outcome, and what to acknowledge."
    __slots__ = ('tables', 'outcome', 'pids', 'gen', 'n', 'nbytes', 'future')
    def __init__(self, tables, outcome, pids, gen, n, nbytes):
        self.tables, self.outcome, self.pids, self.gen, self.n, self.nbytes = tables, outcome, pids, gen, n, nbytes
        self.future = None

def _merge(parts:list[_Batch], gen:int) -> _Batch:
    "One batch of the batches `parts` (of connection `gen`): their tables concatenated per destination."
    tables = {}
    for p in parts:
        for d, t in p.tables.items(): tables.setdefault(d, []).append(t)
    tables = {d: pa.concat_tables(ts) for d, ts in tables.items()}
    out = Outcome(sum(p.outcome.records for p in parts), sum(p.outcome.accepted for p in parts),
                  routed={d: t.num_rows for d, t in tables.items()})
    return _Batch(tables, out, [p for b in parts for p in b.pids], gen, len(parts), sum(b.nbytes for b in parts))

# ---------------------------------------------------------------------------------------------- the ingester
class MqttIngester:
    "Subscribe to device telemetry on a broker and store it through a `Service`."
    def __init__(self, service:Service,                  # validates, routes and stores what arrives
                 host:str='127.0.0.1', port:int=1883,       # the broker
                 username:str|None=None, password:str|None=None,   # the ingester's broker credentials
                 client_id:str='iot2ml-ingest-0',           # fixed: the broker keeps the session under it
                 shared_group:str|None=None,                # MQTT 5 shared subscription group, to split one stream
                 batch_messages:int=5000,                   # messages per batch at most
                 batch_seconds:float=0.02,                  # how long the first message waits for a batch to fill
                 batch_bytes:int=1 << 20,                   # payload bytes per batch at most
                 keepalive:int=30,                          # seconds (the broker may override it)
                 receive_maximum:int=10_000,                # unacknowledged messages the broker may send ahead
                 max_pending_messages:int=50_000,           # stop reading the socket once this many wait ...
                 max_pending_bytes:int=64 << 20,            # ... or this many payload bytes
                 session_expiry:int=7 * 24 * 3600,          # seconds the broker keeps the session while we are away
                 max_inflight_batches:int=8):               # batches appended to the spool, fsync pending
        if not 1 <= receive_maximum <= 65535:
            raise ConfigError(f"receive_maximum {receive_maximum} must be between 1 and 65535")
        self.svc, self.host, self.port = service, host, port
        self.username, self.password, self.client_id = username, password, client_id
        self.batch_messages, self.batch_seconds, self.batch_bytes = batch_messages, batch_seconds, batch_bytes
        self.keepalive, self.receive_maximum, self.session_expiry = keepalive, receive_maximum, session_expiry
        self.max_pending_messages, self.max_pending_bytes = max_pending_messages, max_pending_bytes
        self.max_inflight_batches = max_inflight_batches
        self.shared_group = shared_group
        self.topic = f"$share/{shared_group}/{TOPIC}" if shared_group else TOPIC
        self.connected = threading.Event()
        self.session_present = False
        self.messages = self.acked = self.rejected_messages = self.readings = self.spool_full = 0
        self.reconnects = 0
        self.last_error: str|None = None
        self._cond = threading.Condition()
        self._inbox: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._gen = 0
        self._sock: socket.socket|None = None
        self._send_lock = threading.Lock()
        self._last_send = 0.0
        self._stopping = False
        self._deadline = float('inf')
        self._topics: dict[bytes, tuple] = {}
        self._sensors: set = set()
        self._net = threading.Thread(target=self._run, name='mqtt-net', daemon=True)
        self._worker = threading.Thread(target=self._work, name='mqtt-ingest', daemon=True)

    def __repr__(self): return f"MqttIngester({self.host}:{self.port}, {self.topic!r}, client_id={self.client_id!r})"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> 'MqttIngester':
        "Start the worker and the network thread (which connects, retrying until the broker answers); returns at once."
        self._worker.start()
        self._net.start()
        return self

    def stop(self, timeout:float=30.0) -> None:
        """Stop reading, store and acknowledge what has arrived (for at most `timeout` s), disconnect. Unacknowledged
        messages stay with the broker."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        if self._net.is_alive(): self._net.join(timeout)
        if self._worker.is_alive(): self._worker.join(max(0.1, self._deadline - time.monotonic()) + 1)
        with self._send_lock:
            sock, self._sock = self._sock, None
            self._gen += 1
        if sock is not None:
            try: sock.sendall(_DISCONNECT)   # a normal disconnection: the session and its queue stay (`session_expiry`)
            except OSError: pass
            sock.close()
        self.connected.clear()

    @property
    def stats(self) -> dict:
        "Counters: messages received, acknowledged and rejected, readings stored, reconnects, what waits in memory."
        with self._cond: pending, pbytes = len(self._inbox), self._pending_bytes
        return dict(messages=self.messages, acked=self.acked, rejected_messages=self.rejected_messages,
                    readings=self.readings, reconnects=self.reconnects, spool_full=self.spool_full, pending=pending,
                    pending_bytes=pbytes, connected=self.connected.is_set(),
                    last_error=self.last_error)

    # ------------------------------------------------------------------ the network thread
    def _send(self, data:bytes, gen:int|None=None) -> bool:
        "Write `data` on the current connection (only if it is still connection `gen`); False if it could not."
        with self._send_lock:
            if self._sock is None or (gen is not None and gen != self._gen): return False
            try: self._sock.sendall(data)
            except OSError as e:
                log.warning("could not write to the broker (%s); reconnecting", e)
                try: self._sock.shutdown(socket.SHUT_RDWR)
                except OSError: pass
                return False
            self._last_send = time.monotonic()
            return True

    def _run(self):
        delay = 0.2
        while not self._stopping:
            try: sock, rest = self._open()
            except MqttRefused as e:
                self.last_error = str(e)
                log.error("%s", e)
                delay = 5.0
            except Exception as e:   # OSError, or a malformed answer
                self.last_error = f"cannot connect to {self.host}:{self.port}: {e}"
                log.warning("cannot connect to the broker at %s:%s (%s); retrying in %.1f s",
                            self.host, self.port, e, delay)
            else:
                delay = 0.2
                try: self._read_loop(sock, rest)
                except Exception as e:   # OSError, a protocol error, or a packet this client cannot read: reconnect
                    if not self._stopping:
                        self.last_error = f"connection lost: {e}"
                        log.warning("lost the connection to the broker (%s); reconnecting", e,
                                    exc_info=not isinstance(e, OSError))
                if self._stopping: return   # stop() disconnects once the worker has acknowledged what it stored
                self._drop(sock)
                self.reconnects += 1
            end = time.monotonic() + delay
            with self._cond:
                while not self._stopping and time.monotonic() < end: self._cond.wait(end - time.monotonic())
            delay = min(delay * 2, 5.0)

    def _drop(self, sock:socket.socket):
        "Forget a connection: messages it delivered that are not stored yet are dropped (the broker resends them)."
        with self._cond, self._send_lock:   # together: `_take` never pairs this connection's messages with a later gen
            if self._sock is sock: self._sock = None
            self._gen += 1
            self._inbox.clear()
            self._pending_bytes = 0
            self._cond.notify_all()
        self.connected.clear()
        try: sock.close()
        except OSError: pass

    def _open(self) -> tuple[socket.socket, bytes]:
        "Connect, send CONNECT, read CONNACK; then SUBSCRIBE (its SUBACK is read by the read loop)."
        sock = socket.create_connection((self.host, self.port), timeout=10)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try: sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError: pass
            sock.sendall(self._connect_packet())
            data, i, rl = _read_connack(sock)
            self._check_connack(data, i, rl)
            sock.settimeout(30)
            with self._send_lock:
                self._sock = sock
                self._gen += 1
            # Retain Handling 1: retained messages only for a new subscription, not each time the session resumes
            self._send(_packet(0x82, struct.pack('>H', 1) + b'\x00' + _s(self.topic) + bytes((0x01 | 0x10,))))
            log.info("connected to %s:%s as %s (session %s)", self.host, self.port, self.client_id,
                     'resumed' if self.session_present else 'new')
            return sock, data[i + rl:]
        except BaseException:
            sock.close()
            raise

    def _connect_packet(self) -> bytes:
        "CONNECT: MQTT 5, clean start off, our session expiry, Receive Maximum, client id and credentials."
        flags = (0x80 if self.username is not None else 0) | (0x40 if self.password is not None else 0)
        props = b'\x11' + struct.pack('>I', self.session_expiry) + b'\x21' + struct.pack('>H', self.receive_maximum)
        body = (_s(b'MQTT') + bytes((5, flags)) + struct.pack('>H', self.keepalive) + _varint(len(props)) + props
                + _s(self.client_id) + (_s(self.username) if self.username is not None else b'')
                + (_s(self.password) if self.password is not None else b''))
        return _packet(0x10, body)

    def _check_connack(self, data:bytes, i:int, rl:int) -> None:
        "`MqttRefused` saying why if CONNACK refuses us; else note the session and the broker's keep alive."
        if data[0] >> 4 != 2: raise _ProtocolError(f"expected CONNACK, got packet type {data[0] >> 4}")
        code = data[i + 1]
        props, _ = _props(data, i + 2) if rl > 2 else ({}, 0)
        if code >= 0x80:
            hint = ("; check --username and --password-file (iot2ml broker-config writes both)" if code in (0x86, 0x87)
                    else "; give each ingester its own --client-id" if code == 0x85 else '')
            raise MqttRefused(f"the broker at {self.host}:{self.port} refused the connection: "
                              f"{_reason(code, props)}{hint}")
        self.session_present = bool(data[i] & 1)
        if 0x13 in props: self.keepalive = props[0x13]   # Server Keep Alive overrides ours

    def _read_loop(self, sock:socket.socket, rest:bytes):
        ka = max(self.keepalive, 1)
        ping_sent = None
        pending = rest
        last_recv = time.monotonic()
        while True:
            if pending:
                msgs, nbytes, used = self._parse(pending)
                pending = pending[used:]
                if msgs:
                    with self._cond:
                        if self._stopping: return
                        self._inbox.extend(msgs)
                        self._pending_bytes += nbytes
                        self._cond.notify_all()
            with self._cond:   # backpressure: stop reading while too much waits for the worker
                while not self._stopping and self._full() and self._sock is sock:
                    self._cond.wait(0.5)
                    if time.monotonic() - self._last_send > ka / 2: self._send(_PINGREQ)
                if self._stopping: return
            if self._sock is not sock: raise ConnectionError("the connection was closed")
            r, _, _ = select.select([sock], [], [], min(0.5, ka / 4))
            now = time.monotonic()
            if r:
                chunk = sock.recv(1 << 20)
                if not chunk: raise ConnectionError("the broker closed the connection")
                pending = pending + chunk if pending else chunk
                last_recv = now
                ping_sent = None
            if now - self._last_send > ka / 2 and ping_sent is None:
                self._send(_PINGREQ)
                ping_sent = now
            if ping_sent is not None and now - last_recv > ka * 1.5:
                raise ConnectionError(f"no answer from the broker for {now - last_recv:.0f} s")

    def _parse(self, b:bytes) -> tuple[list, int, int]:
        "Cut complete packets off `b`: the PUBLISHes as (packet id, topic, payload), their payload bytes, bytes used."
        out, pos, n, nbytes = [], 0, len(b), 0
        append = out.append
        while n - pos >= 2:
            b0 = b[pos]
            rl = b[pos + 1]
            i = pos + 2
            if rl & 128:
                try: rl, i = _read_varint(b, pos + 1)
                except IndexError: break
            end = i + rl
            if end > n: break
            if b0 >> 4 == 3:   # PUBLISH
                j = i + 2 + ((b[i] << 8) | b[i + 1])
                topic = b[i + 2:j]
                if b0 & 6:
                    pid = (b[j] << 8) | b[j + 1]
                    j += 2
                else: pid = -1
                pl = b[j]
                if pl & 128:
                    pl, j = _read_varint(b, j)
                    j += pl
                else: j += 1 + pl
                append((pid, topic, b[j:end]))
                nbytes += end - j
            else: self._control(b0, b[i:end])
            pos = end
        return out, nbytes, pos

    def _control(self, b0:int, body:bytes):
        t = b0 >> 4
        if t == 9:   # SUBACK
            props, i = _props(body, 2)
            code = body[i] if i < len(body) else 0x80
            if code >= 0x80:
                self.last_error = f"the broker refused the subscription to {self.topic}: {_reason(code, props)}"
                log.error("%s; check the ACL (iot2ml broker-config) and, with --shared, that the broker supports "
                          "MQTT 5 shared subscriptions",
                          self.last_error)
            else:
                self.connected.set()
                self.last_error = None
                log.info("subscribed to %s (QoS %d)", self.topic, code)
        elif t == 14:   # DISCONNECT from the broker
            code = body[0] if body else 0
            props = _props(body, 1)[0] if len(body) > 1 else {}
            hint = ("; another client uses this client id: give each ingester its own --client-id" if code == 0x8E
                    else '')
            raise ConnectionError(f"the broker disconnected us: {_reason(code, props)}{hint}")
        elif t == 6:   # PUBREL: we never grant QoS 2, but answer one anyway
            self._send(bytes((0x70, 2)) + body[:2])
        elif t in (13, 11): pass   # PINGRESP, UNSUBACK
        else: raise _ProtocolError(f"unexpected MQTT packet type {t} from the broker")

    # ------------------------------------------------------------------ the worker
    def _take(self, wait:float) -> tuple[list, int]:
        """Up to `batch_messages` messages (or `batch_bytes` of payload) once that many wait or the first has waited
        `batch_seconds`; ([], gen) if none came within `wait` s."""
        with self._cond:
            end = time.monotonic() + wait
            while not self._inbox:
                left = end - time.monotonic()
                if left <= 0 or self._stopping: return [], self._gen
                self._cond.wait(left)
            if self._filling() and self.batch_seconds > 0:
                fill = time.monotonic() + self.batch_seconds
                while self._filling() and (left := fill - time.monotonic()) > 0: self._cond.wait(left)
            q, msgs, nb, lim, cap = self._inbox, [], 0, self.batch_bytes, self.batch_messages
            while q and len(msgs) < cap and nb < lim:
                m = q.popleft()
                msgs.append(m)
                nb += len(m[2])
            self._pending_bytes -= nb
            self._cond.notify_all()   # the network thread may be waiting for room
            return msgs, self._gen

    def _full(self) -> bool:
        "Whether the messages or payload bytes waiting for the worker reached their cap (under `_cond`)."
        return len(self._inbox) >= self.max_pending_messages or self._pending_bytes >= self.max_pending_bytes

    def _filling(self) -> bool:
        "Whether a batch has room for more messages and bytes, and we are not stopping (under `_cond`)."
        return len(self._inbox) < self.batch_messages and self._pending_bytes < self.batch_bytes and not self._stopping

    def _give_up(self) -> bool:
        "Stopping, and the time `stop` allows is over: what is not acknowledged stays with the broker."
        return self._stopping and time.monotonic() > self._deadline

    def _work(self):
        inflight: collections.deque[_Batch] = collections.deque()   # appended to the spool, fsync pending, in order
        retry: collections.deque[_Batch] = collections.deque()      # prepared, refused by the spool (full or failing)
        try:
            while not self._give_up():
                failed = self._ack_done(inflight)
                if failed is not None:
                    retry.append(failed)
                    self._pause(0.5)
                    continue
                if retry:
                    if self._submit(retry[0], inflight): retry.popleft()
                    continue
                if len(inflight) >= self.max_inflight_batches:
                    self._wait(inflight[0], 0.5)
                    continue
                msgs, gen = self._take(0.02 if inflight else 0.2)
                if msgs:
                    try: b = self._prepare_safely(msgs, gen)
                    except Exception:   # e.g. the dead-letter store cannot be written: get the broker to resend them
                        log.exception("could not process %d messages; reconnecting so that the broker resends them",
                                      len(msgs))
                        self._reconnect(gen)
                        self._pause(1.0)
                        continue
                    if not self._submit(b, inflight): retry.append(b)
                elif inflight: self._wait(inflight[0], 0.02)
                elif self._stopping:
                    with self._cond:
                        if not self._inbox: return
        except BaseException:
            log.critical("the MQTT worker died; nothing more is acknowledged (the broker keeps it)", exc_info=True)
            raise

    def _reconnect(self, gen:int):
        "Drop connection `gen` (if still current): the broker resends every message it delivered and we did not ack."
        with self._send_lock:
            if self._sock is not None and gen == self._gen:
                try: self._sock.shutdown(socket.SHUT_RDWR)
                except OSError: pass

    @staticmethod
    def _wait(b:_Batch, timeout:float):
        try: b.future.exception(timeout=timeout)
        except Exception: pass

    def _submit(self, b:_Batch, inflight:collections.deque) -> bool:
        "Append the batch to the spool (not waiting for the fsync); False (after a pause) if the spool is full or fails"
        try: b.future = self.svc.store(b.tables, b.outcome)
        except SpoolFull as e:
            log.warning("spool full; holding %d messages unacknowledged for %.1f s", b.n, e.retry_after)
            self.spool_full += 1
            self._pause(min(max(e.retry_after, 0.05), 5))
            return False
        except Exception as e:
            log.error("could not store %d messages (%s); they stay unacknowledged, retrying in 1 s", b.n, e)
            self.last_error = f"store failed: {e}"
            self._pause(1.0)
            return False
        b.future.add_done_callback(self._notify)
        inflight.append(b)
        return True

    def _notify(self, _f=None):
        with self._cond: self._cond.notify_all()

    def _pause(self, seconds:float):
        end = time.monotonic() + seconds
        with self._cond:
            while not self._give_up() and (left := end - time.monotonic()) > 0: self._cond.wait(left)

    def _ack_done(self, inflight:collections.deque) -> _Batch|None:
        "Acknowledge, in order, the batches whose fsync completed, one write per connection; return one that failed."
        done, failed = [], None
        while inflight and inflight[0].future.done():
            b = inflight.popleft()
            if b.future.exception() is not None:
                log.error("storing %d messages failed (%s); they stay unacknowledged, retrying",
                          b.n, b.future.exception())
                self.last_error = f"store failed: {b.future.exception()}"
                failed = b
                break
            done.append(b)
            self.readings += b.outcome.routed.get('lake', 0)
        for gen in sorted({b.gen for b in done}):   # on the connection that delivered them: packet ids are its own
            bs = [b for b in done if b.gen == gen]
            data = b''.join(_ACK[p] for b in bs for p in b.pids)   # (QoS 0 messages have no packet id and need no ack)
            if not data or self._send(data, gen): self.acked += sum(b.n for b in bs)
        return failed

    # ------------------------------------------------------------------ parse, validate, route
    def _prepare_safely(self, msgs:list, gen:int) -> _Batch:
        "`_prepare`; if it fails (a bug, or a payload that trips one) one message at a time, the culprit dead-lettered"
        try: return self._prepare(msgs, gen)
        except Exception:
            log.exception("could not prepare a batch of %d messages; retrying them one by one", len(msgs))
            return _merge([self._prepare_one(m, gen) for m in msgs], gen)

    def _prepare_one(self, m:tuple, gen:int) -> _Batch:
        "A batch of message `m` alone; if it cannot be prepared, it is dead-lettered whole as a bug (and acknowledged)."
        try: return self._prepare([m], gen)
        except Exception as e:
            why = f"could not be processed ({type(e).__name__}: {e}); this is a bug in iot2ml, please report it"
            self._deadletter({0: [RecordError(0, '-', why)]}, [m], {0: [m[2].decode('utf-8', 'replace')]},
                             [self._topic(m[1])])
            return _Batch({}, Outcome(1, 0), [m[0]] if m[0] >= 0 else [], gen, 1, len(m[2]))

    def _topic(self, tb:bytes) -> tuple[str, str|None, bool]:
        "(topic, its device id or None, whether that id is valid), cached."
        t = self._topics.get(tb)
        if t is None:
            topic = tb.decode('utf-8', 'replace')
            parts = topic.split('/')
            dev = parts[1] if len(parts) == 3 and parts[0] == 'iot2ml' and parts[2] == 'telemetry' else None
            if len(self._topics) > 200_000: self._topics.clear()
            max_len = self.svc.ingestor.limits.max_id_length
            ok = dev is not None and len(dev) <= max_len and _ID.fullmatch(dev) is not None
            t = self._topics[tb] = (topic, dev, ok)
        return t

    def _prepare(self, msgs:list, gen:int) -> _Batch:
        "Parse, validate and route a batch of messages; write dead letters. Nothing is stored yet."
        n = len(msgs)
        now = pd.Timestamp.now(tz='UTC')
        topics = [self._topic(m[1]) for m in msgs]
        items, recs, owner, slow, errors = self._decode(msgs, topics)
        nrec = len(recs) + sum(len(items[i]) for i in slow) + len(errors)
        table = self._validate(items, recs, owner, slow, topics, errors, now)
        raw = as_raw(table, now)
        ing = self.svc.ingestor
        if ing.routes: tables = self._route(raw, topics, errors, recs, items, owner)
        else: tables = {d: raw for d in ing.default_to}
        if errors: self._deadletter(errors, msgs, None, topics, items, recs, owner)
        rejected = sum(len({e.index for e in es}) for es in errors.values())
        out = Outcome(nrec, nrec - rejected, [], {d: t.num_rows for d, t in tables.items()})
        self._count(n, nrec, len(errors))
        return _Batch(tables, out, [m[0] for m in msgs if m[0] >= 0], gen, n, sum(len(m[2]) for m in msgs))

    def _decode(self, msgs:list, topics:list) -> tuple[list, list, list, set, dict]:
        """The payloads read as JSON: (items: per message its records, or None for a single record in `recs`; recs and
        owner: the records of the fast candidates and their message; slow: messages for the exact path; errors: per
        message whose payload is not a JSON reading)."""
        loads = orjson.loads
        items: list = [None] * len(msgs)
        recs, owner = [], []
        slow: set[int] = set()
        errors: dict[int, list[RecordError]] = {}
        for i, m in enumerate(msgs):
            try: obj = loads(m[2])
            except orjson.JSONDecodeError as e:
                try: obj = _lenient(m[2], topics[i][0], e)   # NaN and Infinity, which orjson refuses, fail per record
                except _BadPayload as bad:
                    errors[i] = [RecordError(0, '-', str(bad))]
                    continue
                slow.add(i)
                items[i] = self._records(obj)
                continue
            if type(obj) is dict and 'readings' not in obj:
                recs.append(obj)
                owner.append(i)
            else:
                items[i] = its = self._records(obj)
                recs.extend(its)
                owner.extend([i] * len(its))
        return items, recs, owner, slow, errors

    def _validate(self, items:list, recs:list, owner:list, slow:set, topics:list, errors:dict, now) -> pa.Table:
        "The accepted readings: the fast path's, then the exact path's for `slow`, within the sensor cap (+ `errors`)."
        fast = self._fast(recs, owner, topics, slow, now.value // 1000) if recs else None
        parts = []
        if fast is not None and fast.num_rows: parts.append(fast)
        if slow:
            t, lake_errors = self._exact(sorted(slow), items, recs, owner, topics, now)
            errors.update(lake_errors)
            if t.num_rows: parts.append(t)
        table = (parts[0] if len(parts) == 1 else pa.concat_tables(parts)) if parts else LONG_SCHEMA.empty_table()
        return self._sensor_cap(table, errors) if table.num_rows else table

    def _count(self, messages:int, records:int, rejected_messages:int) -> None:
        "Count a batch in the service's counters (for /metrics) and ours."
        with self.svc._lock:
            self.svc.counters.received += records
            self.svc.counters.requests += messages
        self.messages += messages
        self.rejected_messages += rejected_messages

    def _sensor_cap(self, table:pa.Table, errors:dict) -> pa.Table:
        """`table` without the readings that would give a device more sensors than the service allows; those are
        dead-lettered per device."""
        over = self.svc.sensor_cap(table)
        if over is None: return table
        mask, why = over
        over_cap = table.filter(pa.array(mask))
        cols = (over_cap.column(c).to_pylist() for c in ('device_id', 'sensor', 'ts'))
        for k, (d, sn, ts) in enumerate(zip(*cols)):
            why_k = f"{why[d]} (reading {sn} at {ts.isoformat()})"
            errors.setdefault(('sensors', d), []).append(RecordError(k, 'sensor', why_k))
        return table.filter(pa.array(~mask))

    @staticmethod
    def _records(obj) -> list:
        if isinstance(obj, dict): return obj['readings'] if isinstance(obj.get('readings'), list) else [obj]
        return obj if isinstance(obj, list) else [obj]

    def _fast(self, recs:list, owner:list, topics:list, slow:set, now_us:int) -> pa.Table|None:
        "The readings of the messages whose every record passes the column checks; the other messages go into `slow`."
        lim = self.svc.ingestor.limits
        recs, owner = _objects(recs, owner, slow)
        if not recs: return None
        tdev = [topics[o][1] for o in owner]
        _check_devices(recs, owner, tdev, topics, slow)
        rowner, rdev, sensor, value, ts, unit, quality = _columns(recs, owner, tdev, slow, lim.max_sensors_per_record)
        if not rowner: return None
        vals, value_bad = _values(value)
        us, ts_bad = _times(ts, now_us)
        units, unit_bad = _units(unit, lim.max_id_length)
        q, quality_bad = _qualities(quality)
        bad = _sensors_bad(sensor, self._sensors, lim.max_id_length) | value_bad | ts_bad | unit_bad | quality_bad
        ow = np.asarray(rowner)
        if bad.any():
            slow.update(np.unique(ow[bad]).tolist())
            sens = pa.array([x if type(x) is str else None for x in sensor], pa.string())
        else: sens = pa.array(sensor, pa.string(), from_pandas=False)
        slow.update(_duplicated(ow, sens, us, len(topics)))
        keep = ~np.isin(ow, np.fromiter(slow, 'int64', len(slow))) if slow else None
        if keep is not None and not keep.any(): return None
        if rdev is tdev: devs = pa.array([t[1] for t in topics], pa.string()).take(pa.array(ow))
        else: devs = pa.array(rdev, pa.string())
        t = _long_table(devs, us, sens, vals, units, q)
        return t if keep is None or keep.all() else t.filter(pa.array(keep))

    def _exact(self, slow:list, items:list, recs:list, owner:list, topics:list, now) -> tuple[pa.Table, dict]:
        """The messages `slow` through `from_records` + `check_parsed`, as HTTP bodies are; returns their accepted
        readings and the errors per message. They go in one pass, so a flood of bad messages costs one pass, not one per
        message. Duplicates count within a message only: a message with a reading that repeats another message's (a
        resent message) goes again, in rounds of one message per device."""
        single = {o: r for r, o in zip(recs, owner) if items[o] is None}
        table, errors, again = self._exact_pass(slow, items, single, topics, now)
        if not again: return table, errors
        per_dev: dict = {}
        for i in sorted(again): per_dev.setdefault(topics[i][1], []).append(i)
        tables = [table]
        for rnd in range(max(len(v) for v in per_dev.values())):
            batch = [v[rnd] for v in per_dev.values() if rnd < len(v)]
            t, errs, _ = self._exact_pass(batch, items, single, topics, now, alone=True)
            tables.append(t)
            errors.update(errs)
        return pa.concat_tables(tables), errors

    def _exact_pass(self, batch:list, items:list, single:dict, topics:list, now,
                    alone:bool=False) -> tuple[pa.Table, dict, set]:
        """One `check_parsed` over the records of messages `batch`: their accepted readings, errors per message, and
        (unless each message of `batch` is `alone` with its device) the messages to judge again alone."""
        rr, rown, rloc = _gather(batch, items, single)
        if not rr: return LONG_SCHEMA.empty_table(), {}, set()
        mism = _claimed_devices(rr, rown, topics)
        parsed = from_records(rr)
        if mism: parsed.frame = parsed.frame[~parsed.frame['record'].isin(list(mism))]
        table, rec, errs = check_parsed(parsed, now=now, limits=self.svc.ingestor.limits)
        errs += [RecordError(j, 'device_id', msg) for j, msg in mism.items()]
        again = set() if alone else _resent(errs, rown)
        errors, bad = _per_message(errs, rown, rloc, again)
        if table.num_rows and (bad or again):
            keep = ~np.isin(rec, list(bad))
            if again: keep &= ~np.isin(np.asarray(rown)[rec], list(again))
            table = table.filter(pa.array(keep))
        return table, errors, again

    def _route(self, raw:pa.Table, topics:list, errors:dict, recs, items, owner) -> dict:
        "Apply the configured routes and transforms (as `Ingestor.process`); a reading's topic is its device's."
        df = raw.to_pandas()
        df['record'] = np.arange(len(df))
        out, terrs = self.svc.ingestor.route(df, df['device_id'].map(lambda d: f"iot2ml/{d}/telemetry"))
        badr = _transform_errors(df, terrs, errors)
        arrival = raw['arrival_ts'][0].as_py() if raw.num_rows else None
        res = {}
        for dest, ps in out.items():
            d = pd.concat(ps, ignore_index=True)
            if badr: d = d[~d['record'].isin(badr)]
            res[dest] = as_raw(pa.Table.from_pandas(d.drop(columns='record'), preserve_index=False), arrival)
        return res

    def _deadletter(self, errors:dict, msgs:list, payloads:dict|None, topics:list, items=None, recs=None, owner=None):
        """Hand the rejected records of a batch, with their reasons, to the dead-letter store at once (a line per
        message, `source` naming the topic; the store writes them within a fraction of a second, no fsync per
        message)."""
        single = {}
        if recs is not None:
            for r, o in zip(recs, owner):
                if items[o] is None: single[o] = r
        letters = []
        for i, es in errors.items():
            if isinstance(i, tuple):   # transform failures: per device
                letters.append((es, None, f"mqtt:iot2ml/{i[1]}/telemetry"))
                continue
            if payloads is not None and i in payloads: records = payloads[i]
            elif items is not None and items[i] is not None: records = items[i]
            elif i in single: records = [single[i]]
            else: records = [msgs[i][2].decode('utf-8', 'replace')]   # the payload itself (not JSON)
            letters.append((es, records, f"mqtt:{topics[i][0]}"))
        self.svc.deadletters.add_many(letters)
