"""An OTLP backend behind TLS: grpcio (ssl_server_credentials) or Python's http.server
wrapped by the ssl module, opentelemetry-proto for the messages, nothing of the agent's.

Serves the certificate CERT with key KEY on 127.0.0.1:PORT; with CLIENT_CA, a client
must present a certificate that CA signed (mutual TLS). Each span, metric and log
record received is appended to OUT as one JSON line:
{"signal": "span"|"metric"|"log", "name": ..., "attributes": {...} (spans),
 "authorization": the request's authorization header or null,
 "client": the client certificate's common name or null}.

usage: tls_sink.py grpc|http PORT OUT CERT KEY [CLIENT_CA]
"""
import json
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def record(out, signal, request, authorization, client):
    """Appends one line per item of `request` (an Export*ServiceRequest)."""
    lines = []
    if signal == "span":
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attributes = {kv.key: value(kv.value) for kv in s.attributes}
                    lines.append({"name": s.name, "attributes": attributes})
    elif signal == "metric":
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                lines.extend({"name": m.name} for m in sm.metrics)
    else:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                lines.extend({"name": str(value(r.body))} for r in sl.log_records)
    with LOCK:
        for line in lines:
            line.update(signal=signal, authorization=authorization, client=client)
            out.write(json.dumps(line) + "\n")
        out.flush()


def grpc_peer(context):
    """(authorization metadata, client certificate common name) of a gRPC call."""
    metadata = dict(context.invocation_metadata())
    names = context.auth_context().get("x509_common_name") or [None]
    name = names[0].decode() if isinstance(names[0], bytes) else names[0]
    return metadata.get("authorization"), name


def servicer(base, signal, response, out):
    class Servicer(base):
        def Export(self, request, context):
            record(out, signal, request, *grpc_peer(context))
            return response()

    return Servicer()


def serve_grpc(port, out, cert, key, client_ca):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        servicer(trace_service_pb2_grpc.TraceServiceServicer, "span",
                 trace_service_pb2.ExportTraceServiceResponse, out), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        servicer(metrics_service_pb2_grpc.MetricsServiceServicer, "metric",
                 metrics_service_pb2.ExportMetricsServiceResponse, out), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
        servicer(logs_service_pb2_grpc.LogsServiceServicer, "log",
                 logs_service_pb2.ExportLogsServiceResponse, out), server)
    credentials = grpc.ssl_server_credentials(
        [(open(key, "rb").read(), open(cert, "rb").read())],
        root_certificates=open(client_ca, "rb").read() if client_ca else None,
        require_client_auth=bool(client_ca))
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


MESSAGES = {
    "/v1/traces": ("span", trace_service_pb2.ExportTraceServiceRequest),
    "/v1/metrics": ("metric", metrics_service_pb2.ExportMetricsServiceRequest),
    "/v1/logs": ("log", logs_service_pb2.ExportLogsServiceRequest),
}


def http_handler(out):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            signal, message = MESSAGES.get(self.path, (None, None))
            status = 404
            if signal:
                request = message()
                request.ParseFromString(body)
                peer = self.connection.getpeercert() or {}
                subject = dict(x[0] for x in peer.get("subject", ()))
                record(out, signal, request, self.headers.get("Authorization"),
                       subject.get("commonName"))
                status = 200
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def serve_http(port, out, cert, key, client_ca):
    server = ThreadingHTTPServer(("127.0.0.1", port), http_handler(out))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


def main():
    protocol, port, path, cert, key = sys.argv[1:6]
    client_ca = sys.argv[6] if len(sys.argv) > 6 else None
    out = open(path, "a", encoding="utf-8")
    serve = serve_grpc if protocol == "grpc" else serve_http
    serve(int(port), out, cert, key, client_ca)


if __name__ == "__main__":
    main()
