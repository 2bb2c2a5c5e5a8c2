"""Sends malformed and oversized OTLP to the agent and reports how it answered.

usage: otlp_abuse.py GRPC_PORT HTTP_PORT
Prints one JSON object: {case: status} where status is a gRPC status code name or an
HTTP status number.
"""
import json
import sys
import urllib.error
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def valid_request(spans=1, name_len=8):
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    ss = rs.scope_spans.add()
    for i in range(spans):
        s = ss.spans.add()
        s.trace_id = bytes([1] * 16)
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = "x" * name_len
        s.start_time_unix_nano = 1
        s.end_time_unix_nano = 2
    return req.SerializeToString()


def grpc_call(port, body):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                    options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        call(body, timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        channel.close()


def http_post(port, body, content_type):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=body,
                                 headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    grpc_port, http_port = int(sys.argv[1]), int(sys.argv[2])
    good = valid_request()
    huge = valid_request(spans=1, name_len=5 * 1024 * 1024)
    results = {
        "grpc_garbage": grpc_call(grpc_port, b"\xff\xfe\xfd garbage \x00\x01"),
        "grpc_truncated": grpc_call(grpc_port, valid_request(spans=3)[:-5]),
        "grpc_oversized": grpc_call(grpc_port, huge),
        "grpc_valid_after": grpc_call(grpc_port, good),
        "http_garbage": http_post(http_port, b"\xff\xfe\xfd garbage", "application/x-protobuf"),
        "http_truncated": http_post(http_port, valid_request(spans=3)[:-5], "application/x-protobuf"),
        "http_bad_json": http_post(http_port, b'{"resourceSpans": [', "application/json"),
        "http_wrong_type": http_post(http_port, good, "text/plain"),
        "http_oversized": http_post(http_port, huge, "application/x-protobuf"),
        "http_valid_after": http_post(http_port, good, "application/x-protobuf"),
        "http_valid_json": http_post(http_port, b'{"resourceSpans": []}', "application/json"),
    }
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
