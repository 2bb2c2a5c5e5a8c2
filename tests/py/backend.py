"""A stand-in OTLP backend: opentelemetry-proto + grpcio, nothing of the agent's.

Receives traces, metrics and logs over OTLP/gRPC on 127.0.0.1:PORT and appends one JSON
object per span / metric / log record to OUT (a JSON-lines file), flushed at once.

usage: backend.py PORT OUT
"""
import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def write(out, record):
    with LOCK:
        out.write(json.dumps(record) + "\n")
        out.flush()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        for rs in request.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    write(self.out, {
                        "signal": "span",
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": attrs(s.attributes),
                        "attribute_keys": [kv.key for kv in s.attributes],
                        "events": len(s.events),
                        "links": len(s.links),
                        "resource": resource,
                        "scope": ss.scope.name,
                    })
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        for rm in request.resource_metrics:
            resource = attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    write(self.out, {"signal": "metric", "name": m.name, "unit": m.unit,
                                     "resource": resource})
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    write(self.out, {"signal": "log", "body": value(r.body)})
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    out = open(path, "a", encoding="utf-8")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(out), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(out), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(out), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
