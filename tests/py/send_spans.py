"""Sends one OTLP/gRPC trace export per NAME to the agent, each its own trace of N
INTERNAL spans all named NAME (opentelemetry-proto + grpcio).

usage: send_spans.py PORT NAME[*N] ...
Prints one JSON object: {NAME: gRPC status code name of the agent's answer}.
"""
import json
import os
import sys
import time

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def request(name, n):
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    trace_id = os.urandom(16)
    now = time.time_ns()
    for i in range(n):
        s = ss.spans.add()
        s.trace_id = trace_id
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = name
        s.kind = trace_pb2.Span.SPAN_KIND_INTERNAL
        s.start_time_unix_nano = now - 1_000_000
        s.end_time_unix_nano = now
    return req


def main():
    port = int(sys.argv[1])
    stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    answers = {}
    for case in sys.argv[2:]:
        name, _, n = case.partition("*")
        try:
            stub.Export(request(name, int(n or 1)), timeout=10)
            answers[name] = "OK"
        except grpc.RpcError as e:
            answers[name] = e.code().name
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    main()
