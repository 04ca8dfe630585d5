#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/seed-*.

The seeds are committed; this script says where they came from and makes
them again (`python3 fuzz/make_seeds.py`). The TLS seeds are real handshakes
captured on loopback: openssl s_client and curl against a listener on
127.0.0.1 (ClientHello), and that ClientHello replayed to a Python TLS server
(ServerHello). Everything is cut to SNAP_BYTES, as the kernel cuts it.
"""

import os
import socket
import ssl
import struct
import subprocess
import tempfile
import threading

SNAP_BYTES = 1024
HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- TCP options of SYNs and SYN-ACKs as real stacks send them ----------------
TS = bytes([8, 10]) + struct.pack(">II", 0x8A3B_11C2, 0)
TCP = {
    "linux-syn": bytes([2, 4, 0x05, 0xB4, 4, 2]) + TS + bytes([1, 3, 3, 7]),
    "linux-synack": bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10, 0, 0, 0, 9, 0x8A, 0x3B, 0x11, 0xC2, 1, 3, 3, 7]),
    "loopback-syn": bytes([2, 4, 0xFF, 0xD7, 4, 2]) + TS + bytes([1, 3, 3, 7]),
    "windows-syn": bytes([2, 4, 0x05, 0xB4, 1, 3, 3, 8, 1, 1, 4, 2]),
    "macos-syn": bytes([2, 4, 0x05, 0xB4, 1, 3, 3, 6, 1, 1]) + TS + bytes([4, 2, 0, 0]),
    "mss-only": bytes([2, 4, 0x02, 0x18]),
    "no-ts-synack": bytes([2, 4, 0x05, 0x84, 1, 1, 4, 2, 1, 3, 3, 9]),
    "tfo-cookie": bytes([2, 4, 0x05, 0xB4, 34, 10]) + bytes(range(8)) + bytes([1, 3, 3, 7, 0, 0]),
    "md5sig": bytes([19, 18]) + bytes(16) + bytes([2, 4, 0x05, 0xB4]),
    "truncated-ts": bytes([2, 4, 0x05, 0xB4, 8, 10, 0, 0]),
    "bad-mss-len": bytes([2, 5, 0, 0, 0]),
}
for name, b in TCP.items():
    put("tcp_options", name, b)

# --- HTTP/1.x request heads; first byte: bit 0 = keep the query string ------------
REQ = {
    "curl-get": b"GET /a/b?token=x HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "absolute-form": b"GET http://proxy.example:8080/x?y=1 HTTP/1.1\r\nHost: proxy.example:8080\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    "absolute-https": b"GET https://api.example/v1/items#frag HTTP/1.1\r\nHost: other.example\r\n\r\n",
    "absolute-no-path": b"HEAD http://h.example HTTP/1.0\r\n\r\n",
    "connect": b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\nUser-Agent: curl/7.88.1\r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "post-body": b"POST /orders HTTP/1.1\r\nhost: shop.example\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"probe\":1}",
    "http10-no-host": b"GET / HTTP/1.0\r\n\r\n",
    "host-after-body": b"GET / HTTP/1.1\r\nA: b\r\n\r\nHost: no\r\n",
    "cut-long-path": b"GET /" + b"a" * (SNAP_BYTES - 5),
    "utf8-path": "GET /caf\u00e9/\u65e5\u672c?q=\u00fc HTTP/1.1\r\nHost: xn--caf-dma.example\r\n\r\n".encode(),
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}
for name, b in REQ.items():
    put("http_request", name, b"\x00" + b[: SNAP_BYTES - 1])
put("http_request", "curl-get-keep-query", b"\x01" + REQ["curl-get"])
put("http_request", "absolute-form-keep-query", b"\x01" + REQ["absolute-form"])

# --- status lines, including odd ones ---------------------------------------
STATUS = {
    "200": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "404-http10": b"HTTP/1.0 404 Not Found\r\n\r\n",
    "100-then-200": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    "101-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "no-reason": b"HTTP/1.1 204 \r\n\r\n",
    "999": b"HTTP/1.1 999 Whatever\r\n",
    "099": b"HTTP/1.1 099 Too Low\r\n",
    "sign": b"HTTP/1.1 +20 Signed\r\n",
    "cut": b"HTTP/1.1 2",
    "http2": b"HTTP/2 200\r\n",
}
for name, b in STATUS.items():
    put("http_status", name, b)


# --- TLS: real handshakes on loopback ----------------------------------------
def capture_client_hello(client_cmd):
    """Runs client_cmd(port) against a listener that keeps the first bytes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    p = subprocess.Popen(client_cmd(port), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv.settimeout(10)
    conn, _ = srv.accept()
    conn.settimeout(2)
    data = b""
    try:
        while len(data) < 5 or len(data) < 5 + struct.unpack(">H", data[3:5])[0]:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    conn.close()
    srv.close()
    p.wait(timeout=10)
    return data


def server_first_flight(client_hello, certfile, keyfile):
    """What a TLS server answers to client_hello (ServerHello first)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve)
    t.start()
    c = socket.create_connection(srv.getsockname(), timeout=5)
    c.sendall(client_hello)
    data = b""
    try:
        while len(data) < 1500:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    c.close()
    t.join()
    srv.close()
    return data


with tempfile.TemporaryDirectory() as tmp:
    key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=example.test"],
                   check=True, capture_output=True)
    s_client = ["openssl", "s_client", "-servername", "media.example.test"]
    hellos = {
        "openssl-tls13": capture_client_hello(lambda p: s_client + ["-connect", f"127.0.0.1:{p}"]),
        "openssl-tls12": capture_client_hello(lambda p: s_client + ["-tls1_2", "-connect", f"127.0.0.1:{p}"]),
        "curl": capture_client_hello(lambda p: ["curl", "-sk", "--max-time", "3", "--resolve",
                                                f"api.example.test:{p}:127.0.0.1",
                                                f"https://api.example.test:{p}/"]),
    }
    for name, ch in hellos.items():
        assert ch[:1] == b"\x16", f"{name}: no ClientHello captured"
        put("client_hello_sni", "clienthello-" + name, ch[:SNAP_BYTES])
    put("client_hello_sni", "serverhello-tls13",
        server_first_flight(hellos["openssl-tls13"], crt, key)[:SNAP_BYTES])
    put("client_hello_sni", "serverhello-tls12",
        server_first_flight(hellos["openssl-tls12"], crt, key)[:SNAP_BYTES])
# Segments after the handshake: ChangeCipherSpec + Finished, then a request
# in one application-data record, then an alert (what records() walks).
put("client_hello_sni", "records-ccs-finished",
    bytes([20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 53]) + bytes(53))
put("client_hello_sni", "records-request-alert",
    bytes([23, 3, 3, 0, 40]) + bytes(range(40)) + bytes([21, 3, 3, 0, 19]) + bytes(19))

# --- targets files --------------------------------------------------------------
put("targets_file", "docs-example", b"""# name and tags label the metrics; everything after the URL is optional
https://api.example.com/health  name=api  tag=env:prod tag=team:core
http://10.0.0.7:8080/ready      expect=2xx reuse=2 timeout=3s
https://api.example.com/orders  method=POST header="Content-Type: application/json" data='{"probe":1}' expect=201
""")
put("targets_file", "every-option", b"""https://a.example/x name=api tag=env:prod expect=2xx,304 reuse=2 timeout=300ms interval=1m
http://b/ method=POST header="A: b" data='{}' # c
http://[::1]:8080/v6 name="v6 loopback" expect=200,204 timeout=2.5s interval=10s
""")
put("targets_file", "broken-lines", b"""ftp://nope/
http://x/ bogus=1
http://y/ reuse=0
http://z/ header="unclosed
http://w/ timeout=-1s expect=6xx tag=a-b:1 tag=a_b:2
https://api.example.com/health
https://api.example.com/health
""")


# --- ring-buffer records: Event (152 bytes) and SnapEvent (152 + 1024) ---------
def event(kind, *, dir=0, flags=0x10, opts=b"", payload_len=0, snap=b"", v6=False,
          ev_flags=0, skb_tstamp=0):
    if v6:
        local, remote = b"\xfd\x00" + bytes(13) + b"\x01", b"\xfd\x00" + bytes(13) + b"\x02"
    else:
        local, remote = bytes([10, 10, 1, 2]) + bytes(12), bytes([10, 10, 2, 1]) + bytes(12)
    key = local + remote + struct.pack("<HHB3x", 41234, 443, 6 if v6 else 4)
    ev = struct.pack("<QQ", 1_234_567_890_123, 0x1000_0001) + key
    ev += struct.pack("<IIIIHBBBBBB", 1_000_001, 2_000_002, payload_len, 2, 64240,
                      kind, dir, flags, 64, ev_flags, len(opts))
    ev += opts.ljust(40, b"\0")
    ev += struct.pack("<QQQIHBx", skb_tstamp, 4242, 0, 2_000_002, len(snap), 0)
    assert len(ev) == 152, len(ev)
    if snap:
        ev += snap.ljust(SNAP_BYTES, b"\0")
    return ev


put("event_decode", "syn", event(1, flags=0x02, opts=TCP["linux-syn"]))
put("event_decode", "synack-v6", event(2, dir=1, flags=0x12, opts=TCP["linux-synack"], v6=True,
                                       skb_tstamp=1_700_000_000_000_000_000))
put("event_decode", "data-http", event(3, flags=0x18, payload_len=len(REQ["curl-get"]),
                                       snap=REQ["curl-get"], ev_flags=1))
put("event_decode", "data-tls", event(3, flags=0x18, payload_len=len(hellos["curl"]),
                                      snap=hellos["curl"][:SNAP_BYTES], ev_flags=1))
put("event_decode", "data-response", event(3, dir=1, flags=0x18, payload_len=4000,
                                           snap=STATUS["200"], ev_flags=1))
put("event_decode", "ack-cover", event(4, dir=1))
put("event_decode", "fin", event(5, flags=0x11))
put("event_decode", "rst-retrans", event(6, dir=1, flags=0x04, ev_flags=2))
