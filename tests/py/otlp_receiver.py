"""An OTLP/HTTP metrics receiver for the tests (tests/tests/monitor.rs).

Decodes every POST /v1/metrics with the official schema, the
opentelemetry-proto package's generated classes (not a parser of our own),
and appends it to a file as one JSON line: the request's headers and the
message as protobuf's JSON mapping. Answers as a collector does: 200 with an
empty ExportMetricsServiceResponse; 415 for another content type, 400 for
bytes that do not decode.

usage: otlp_receiver.py OUT.jsonl READY_FILE PORT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

OUT, READY, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Handler(BaseHTTPRequestHandler):
    def answer(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/metrics":
            return self.answer(404, b"not /v1/metrics")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415, b"want application/x-protobuf")
        req = ExportMetricsServiceRequest()
        try:
            req.ParseFromString(body)
        except DecodeError as e:
            return self.answer(400, str(e).encode())
        line = {
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "request": MessageToDict(req),
        }
        with open(OUT, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.answer(
            200,
            ExportMetricsServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", PORT), Handler)
open(READY, "w", encoding="utf-8").close()
server.serve_forever()
