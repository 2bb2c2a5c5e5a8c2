"""Offers the agent more OTLP spans than it can take, for a bounded time, and classifies
every answer (opentelemetry-proto, grpcio, googleapis-common-protos).

Threads send SERVER spans of this process, BATCH to a request, each request its own
trace (span ids 1..BATCH), back to back without waiting: GRPC_THREADS over gRPC, one more
over HTTP/protobuf. An answer is OK (accepted), a throttling reply as OTLP specifies it
(gRPC RESOURCE_EXHAUSTED carrying google.rpc.RetryInfo in grpc-status-details-bin; HTTP
429 or 503 with Retry-After), or an error (anything else, by code).

usage: flood.py GRPC_PORT HTTP_PORT SECONDS BATCH GRPC_THREADS
Prints one JSON object: {"accepted": {trace_id_hex: spans}, "throttled": n,
"by_protocol": {"grpc"|"http": {"accepted": requests, "throttled": requests}},
"errors": {code: n}, "offered_spans": n, "seconds": s, "retry_delays_s": [distinct]}.
"""
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MARK = b"\xee" * 16
LOCK = threading.Lock()


def template(batch):
    """One request, serialized, with MARK where each request's trace id goes."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in [("service.name", "flood"), ("service.version", "1.0"),
                 ("telemetry.sdk.language", "python"), ("telemetry.sdk.name", "opentelemetry")]:
        a = rs.resource.attributes.add()
        a.key, a.value.string_value = k, v
    pid = rs.resource.attributes.add()
    pid.key, pid.value.int_value = "process.pid", os.getpid()
    ss = rs.scope_spans.add()
    ss.scope.name = "flood"
    now = time.time_ns()
    for i in range(batch):
        s = ss.spans.add()
        s.trace_id = MARK
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = "chat flood-model"
        s.kind = trace_pb2.Span.SPAN_KIND_SERVER
        s.start_time_unix_nano = now - 20_000_000
        s.end_time_unix_nano = now
        for k, v in [("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "flood-model"),
                     ("http.request.method", "POST"), ("url.path", "/v1/chat/completions"),
                     ("server.address", "127.0.0.1")]:
            a = s.attributes.add()
            a.key, a.value.string_value = k, v
        for k, v in [("gen_ai.usage.input_tokens", 120), ("gen_ai.usage.output_tokens", 80),
                     ("http.response.status_code", 200)]:
            a = s.attributes.add()
            a.key, a.value.int_value = k, v
    return req.SerializeToString()


class Tally:
    def __init__(self):
        self.accepted = {}
        self.throttled = 0
        self.by_protocol = {"grpc": {"accepted": 0, "throttled": 0},
                            "http": {"accepted": 0, "throttled": 0}}
        self.errors = {}
        self.offered = 0
        self.delays = set()

    def error(self, code):
        with LOCK:
            self.errors[code] = self.errors.get(code, 0) + 1


def retry_info_delay(error):
    """The RetryInfo delay in a gRPC error's status details, or None."""
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if details is None:
        return None
    status = status_pb2.Status()
    status.ParseFromString(details)
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def grpc_worker(port, body, batch, worker, deadline, tally):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        trace = worker.to_bytes(4, "big") + seq.to_bytes(12, "big")
        try:
            call(body.replace(MARK, trace), timeout=10)
            with LOCK:
                tally.accepted[trace.hex()] = batch
                tally.offered += batch
                tally.by_protocol["grpc"]["accepted"] += 1
        except grpc.RpcError as e:
            with LOCK:
                tally.offered += batch
            delay = retry_info_delay(e) if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            if delay is None:
                tally.error(e.code().name)
            else:
                with LOCK:
                    tally.throttled += 1
                    tally.by_protocol["grpc"]["throttled"] += 1
                    tally.delays.add(delay)
    channel.close()


def http_worker(port, body, batch, worker, deadline, tally):
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        trace = worker.to_bytes(4, "big") + seq.to_bytes(12, "big")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces",
                                     data=body.replace(MARK, trace), method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        with LOCK:
            tally.offered += batch
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                with LOCK:
                    tally.accepted[trace.hex()] = batch
                    tally.by_protocol["http"]["accepted"] += 1
        except urllib.error.HTTPError as e:
            after = e.headers.get("Retry-After")
            if e.code in (429, 503) and after is not None:
                with LOCK:
                    tally.throttled += 1
                    tally.by_protocol["http"]["throttled"] += 1
                    tally.delays.add(float(after))
            else:
                tally.error(f"HTTP {e.code}")
        except OSError as e:
            tally.error(f"HTTP transport: {e}")


def main():
    grpc_port, http_port, seconds, batch, threads = (int(a) for a in sys.argv[1:6])
    body = template(batch)
    tally = Tally()
    start = time.monotonic()
    deadline = start + seconds
    workers = [threading.Thread(target=grpc_worker,
                                args=(grpc_port, body, batch, w + 1, deadline, tally))
               for w in range(threads)]
    workers.append(threading.Thread(target=http_worker,
                                    args=(http_port, body, batch, threads + 1, deadline, tally)))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"accepted": tally.accepted, "throttled": tally.throttled,
                      "by_protocol": tally.by_protocol,
                      "errors": tally.errors, "offered_spans": tally.offered,
                      "seconds": time.monotonic() - start,
                      "retry_delays_s": sorted(tally.delays)}), flush=True)


if __name__ == "__main__":
    main()
