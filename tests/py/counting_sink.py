"""An OTLP/gRPC backend that counts the spans it receives, per trace, and every span it
receives twice (opentelemetry-proto + grpcio, nothing of the agent's). Metrics and logs
are accepted and ignored.

usage: counting_sink.py PORT
Prints "ready", then, when its stdin closes, one JSON object:
{"traces": {trace_id_hex: distinct spans}, "duplicates": n, "spans": n} and exits.
"""
import json
import os
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import accept_all

LOCK = threading.Lock()
SEEN = {}
COUNTS = {"duplicates": 0, "spans": 0}


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        with LOCK:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        ids = SEEN.setdefault(s.trace_id.hex(), set())
                        if s.span_id in ids:
                            COUNTS["duplicates"] += 1
                        ids.add(s.span_id)
                        COUNTS["spans"] += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    accept_all.add_to(server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    with LOCK:
        report = {"traces": {t: len(ids) for t, ids in SEEN.items()}, **COUNTS}
    print(json.dumps(report), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
