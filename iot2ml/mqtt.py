"""The MQTT face of iot2ml: `iot2ml mqtt` subscribes to a broker and stores what devices publish.

Hand-written (a subscriber loop). Devices publish on `iot2ml/<device_id>/telemetry` one reading or a batch,
long or wide, as JSON; the broker's ACL (written by `iot2ml broker-config`) lets a device publish only on its
own topic, and a reading whose `device_id` differs from the topic's is rejected here too.

Delivery: QoS 1 with a persistent session (a fixed client id, `clean_session=False`, or an MQTT 5 session
that outlives the connection), so what devices publish while the ingester is down is queued by the broker
and arrives after a restart. paho runs with `manual_ack=True`: a message is acknowledged (PUBACK) only after
its readings are fsynced in the spool (or its bad records are in the dead-letter store). Messages are taken
from paho's network thread in batches by a worker thread, so parsing, validation and one fsync are shared by
hundreds of messages. When the spool is full nothing is acknowledged: the broker stops sending once its
in-flight window is full, and resends after a reconnect, so nothing is lost.

Scale-out: with `shared_group`, MQTT 5 shared subscriptions (`$share/<group>/iot2ml/+/telemetry`) split
one stream over several ingesters, each with its own spool and writer id.
"""
from __future__ import annotations
import logging, queue, threading, time, uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from .ingest import RecordError
from .parse import from_records
from .service import Service
from .spool import SpoolFull

__all__ = ['MqttIngester', 'TOPIC']

log = logging.getLogger('iot2ml.mqtt')
TOPIC = 'iot2ml/+/telemetry'

@dataclass
class _Msg:
    mid: int; topic: str; payload: bytes; qos: int

class MqttIngester:
    "Subscribe to device telemetry on a broker and store it through a `Service`."
    def __init__(self, service:Service, host:str='127.0.0.1', port:int=1883, username:str|None=None, password:str|None=None,
                 client_id:str='iot2ml-ingest-0', shared_group:str|None=None, batch_messages:int=2000, batch_seconds:float=0.02,
                 keepalive:int=30):
        self.svc, self.host, self.port = service, host, port
        self.batch_messages, self.batch_seconds = batch_messages, batch_seconds
        v5 = shared_group is not None
        self.topic = f"$share/{shared_group}/{TOPIC}" if v5 else TOPIC
        kw = dict(protocol=mqtt.MQTTv5) if v5 else dict(protocol=mqtt.MQTTv311, clean_session=False)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=True, **kw)
        self.v5, self.keepalive = v5, keepalive
        if username: self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect, self.client.on_message, self.client.on_disconnect = self._on_connect, self._on_message, self._on_disconnect
        self.q: queue.Queue[_Msg] = queue.Queue()
        self.connected = threading.Event(); self._stop = threading.Event()
        self.messages = self.acked = self.rejected_messages = 0
        self._worker = threading.Thread(target=self._work, name='mqtt-ingest', daemon=True)

    # ------------------------------------------------------------------ connection
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("the broker refused the connection: %s; check --username/--password-file (iot2ml broker-config)", reason_code)
            return
        client.subscribe(self.topic, qos=1); self.connected.set()
        log.info("connected to %s:%s, subscribed to %s", self.host, self.port, self.topic)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if not self._stop.is_set(): log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg):
        self.q.put(_Msg(msg.mid, msg.topic, msg.payload, msg.qos))

    def start(self) -> 'MqttIngester':
        "Connect (retrying until the broker answers) and start the worker; returns at once."
        self._worker.start()
        props = None
        if self.v5:
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            props = Properties(PacketTypes.CONNECT); props.SessionExpiryInterval = 7 * 24 * 3600
            self.client.connect_async(self.host, self.port, self.keepalive, clean_start=False, properties=props)
        else: self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.reconnect_delay_set(0.2, 5)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        "Store and acknowledge what has arrived, disconnect, stop."
        self._stop.set(); self._worker.join(30)
        self.client.disconnect(); self.client.loop_stop()

    # ------------------------------------------------------------------ the worker
    def _take(self) -> list[_Msg]:
        try: first = self.q.get(timeout=0.2)
        except queue.Empty: return []
        batch, deadline = [first], time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_messages:
            try: batch.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty: break
        return batch

    def _work(self):
        held: list[_Msg] = []
        while not (self._stop.is_set() and self.q.empty() and not held):
            batch = held or self._take(); held = []
            if not batch: continue
            try: self._store(batch)
            except SpoolFull as e:
                log.warning("spool full; holding %d messages unacknowledged for %.1f s", len(batch), e.retry_after)
                held = batch; time.sleep(min(e.retry_after, 5))
            except Exception:
                log.exception("could not store %d messages; they stay unacknowledged and the broker will resend them", len(batch))
                time.sleep(1)

    def _store(self, batch:list[_Msg]) -> None:
        "Parse, validate, route and durably store a batch of messages, then acknowledge them."
        recs, owner, topic_dev, errors_by_msg = [], [], [], {}
        for i, m in enumerate(batch):
            parts = m.topic.split('/')
            dev = parts[1] if len(parts) == 3 and parts[0] == 'iot2ml' and parts[2] == 'telemetry' else None
            try: obj = orjson.loads(m.payload)
            except orjson.JSONDecodeError as e:
                errors_by_msg[i] = f"payload is not valid JSON ({e}); publish a JSON reading or list of readings"; continue
            items = obj['readings'] if isinstance(obj, dict) and isinstance(obj.get('readings'), list) else obj if isinstance(obj, list) else [obj]
            for r in items:
                if isinstance(r, dict) and 'device_id' not in r and dev: r = {**r, 'device_id': dev}
                recs.append(r); owner.append(i); topic_dev.append(dev)
        parsed = from_records(recs)
        mism = {}   # a reading may only claim the device of its topic
        for j, r in enumerate(recs):
            if isinstance(r, dict) and topic_dev[j] and r.get('device_id') not in (None, topic_dev[j]):
                mism[j] = f"published on {batch[owner[j]].topic} but claims device {r.get('device_id')!r}; publish on iot2ml/<its device_id>/telemetry"
        if mism:
            keep = ~parsed.frame['record'].isin(list(mism)).to_numpy()
            parsed.frame = parsed.frame[keep]
            parsed.errors += [RecordError(j, 'device_id', msg) for j, msg in mism.items()]
        self.messages += len(batch)
        tables, outcome = self.svc.route(parsed, source='mqtt', topic=[batch[o].topic for o in owner], records=recs)
        if errors_by_msg:
            self.svc.deadletters.add([RecordError(i, '-', msg) for i, msg in errors_by_msg.items()],
                                     [m.payload.decode('utf-8', 'replace') for m in batch], 'mqtt')
            self.rejected_messages += len(errors_by_msg)
        self.svc.store(tables, outcome).result()     # durable (or raises SpoolFull: nothing acknowledged)
        for m in batch:
            if m.qos: self.client.ack(m.mid, m.qos)
        self.acked += len(batch)
