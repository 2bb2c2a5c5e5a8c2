"""Sends hand-built OTLP span batches to the agent over gRPC (opentelemetry-proto and
grpcio, nothing of the agent's): what an SDK retry or a careless sender produces.

usage: untrusted_sender.py GRPC_PORT resend|bad UNIT

resend: two SERVER spans, A then B, each burning UNIT seconds of this thread's CPU, with
  its OS thread id; A's batch is exported twice (the same bytes: a retry), B's once.
bad: one good SERVER span burning UNIT seconds; three SERVER spans with impossible
  times (start 0; end before start; two hours long); a SERVER span that already carries
  energy.joules, carbon.gco2e and keys of its own, over the same time; and a CLIENT span
  with zero times.

Prints one JSON object: pid, and the span ids (hex) by role.
"""
import json
import os
import sys
import threading
import time

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

sys.dont_write_bytecode = True  # importing a sibling script leaves no __pycache__ behind
from inference_server import burn  # noqa: E402

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACE = bytes(range(1, 17))
HOUR_NS = 3600 * 10**9


def attr(span_or_resource, key, value):
    kv = span_or_resource.attributes.add()
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = value


def batch(spans):
    """spans: (span_id, name, kind, start, end, {attributes})"""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attr(rs.resource, "service.name", "untrusted-sender")
    attr(rs.resource, "process.pid", os.getpid())
    ss = rs.scope_spans.add()
    ss.scope.name = "untrusted"
    for span_id, name, kind, start, end, attributes in spans:
        s = ss.spans.add()
        s.trace_id = TRACE
        s.span_id = span_id.to_bytes(8, "big")
        s.name = name
        s.kind = kind
        s.start_time_unix_nano = start
        s.end_time_unix_nano = end
        for k, v in attributes.items():
            attr(s, k, v)
    return req.SerializeToString()


def timed(seconds):
    start = time.time_ns()
    burn(seconds)
    return start, time.time_ns()


def resend(call, unit):
    server = trace_pb2.Span.SPAN_KIND_SERVER
    thread = {"thread.native_id": threading.get_native_id()}
    a = timed(unit)
    b = timed(unit)
    a_batch = batch([(0xA, "request A", server, a[0], a[1], thread)])
    call(a_batch, timeout=10)
    call(a_batch, timeout=10)
    call(batch([(0xB, "request B", server, b[0], b[1], thread)]), timeout=10)
    return {"a": f"{0xA:016x}", "b": f"{0xB:016x}"}


def bad(call, unit):
    server = trace_pb2.Span.SPAN_KIND_SERVER
    client = trace_pb2.Span.SPAN_KIND_CLIENT
    good = timed(unit)
    now = time.time_ns()
    theirs = {"energy.joules": 1e9, "carbon.gco2e": "lots", "energy.budget": 5, "team": "a"}
    call(batch([
        (1, "good", server, good[0], good[1], {}),
        (2, "starts at 0", server, 0, good[1], {}),
        (3, "ends before it starts", server, good[1], good[0], {}),
        (4, "two hours", server, now - 2 * HOUR_NS, now, {}),
        (5, "carries our keys", server, good[0], good[1], theirs),
        (6, "client at 0", client, 0, 0, {}),
    ]), timeout=10)
    ids = lambda *n: [f"{i:016x}" for i in n]
    return {"good": ids(1)[0], "invalid": ids(2, 3, 4), "keyed": ids(5)[0], "client": ids(6)[0]}


def main():
    port, scenario, unit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    spans = {"resend": resend, "bad": bad}[scenario](call, unit)
    channel.close()
    print(json.dumps({"pid": os.getpid(), "spans": spans}), flush=True)


if __name__ == "__main__":
    main()
