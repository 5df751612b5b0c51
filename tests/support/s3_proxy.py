"""Request-counting, fault-injecting proxy in front of an S3-compatible server, for tests and benchmarks.

Usage:
  s3_proxy.py --upstream http://127.0.0.1:P --port-file F [--port N] [--fail N] [--fail-status 503] [--ignore-conditions]

Listens on 127.0.0.1 (--port, else a free port) and writes that port to F (atomically) once it serves. Every
request is forwarded to upstream with its headers as received, Host included (S3 signatures cover
the Host header, so a proxy that rewrote it would break every signature), and the answer is relayed
as it streams. The first N requests get --fail-status (503 by default) with an S3 `SlowDown` error
instead, which clients must retry. --ignore-conditions answers 200 where upstream answered 412 Precondition
Failed, as a server that ignores `If-None-Match` would (some S3-compatible servers and gateways do); the
header itself cannot be stripped, since the request's signature covers it. Control endpoints (never forwarded, never counted):
  GET  /_proxy/stats  {"requests", "by_method": {METHOD: n}, "faulted", "bytes_up", "bytes_down"}
  POST /_proxy/reset  the same counters, then zeroes them (which also re-arms --fail)
Exits on SIGTERM/SIGINT and when stdin reaches EOF (a parent holding a stdin pipe never leaks it).
Standard library only.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import threading
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}


class Counters:
    def __init__(self, fail):
        self.lock = threading.Lock()
        self.fail = fail
        self.reset()

    def reset(self):
        with self.lock:
            self.requests, self.by_method, self.faulted, self.bytes_up, self.bytes_down = 0, {}, 0, 0, 0

    def take(self, method):
        """Counts a request; True when it is to be faulted."""
        with self.lock:
            if self.faulted < self.fail:
                self.faulted += 1
                return True
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1
            return False

    def add(self, up=0, down=0):
        with self.lock:
            self.bytes_up += up
            self.bytes_down += down

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "by_method": dict(self.by_method), "faulted": self.faulted,
                    "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}


def handler(upstream, counters, fail_status, ignore_conditions):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def reply(self, status, body, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_any(self):
            body = self.read_body()
            if self.path.startswith("/_proxy/"):
                stats = counters.stats()
                if self.path == "/_proxy/reset":
                    counters.reset()
                return self.reply(200, json.dumps(stats).encode(), "application/json")
            if counters.take(self.command):
                err = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>' \
                      b'<Message>injected fault</Message></Error>'
                return self.reply(fail_status, err, "application/xml")
            counters.add(up=len(body))
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=600)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        conn.putheader(k, v)
                if body or self.command in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                if ignore_conditions and resp.status == 412:
                    resp.read()
                    self.send_response(200)
                    self.send_header("ETag", '"0"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    while chunk := resp.read(1 << 20):
                        counters.add(down=len(chunk))
                        self.wfile.write(chunk)
            except OSError as e:
                self.reply(502, f"upstream: {e}".encode(), "text/plain")
            finally:
                conn.close()

        def handle_quietly(self):
            # A client that hangs up early (DVC closes streams it has read enough of) is not
            # an error of the proxy's.
            try:
                self.handle_any()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_quietly

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fail", type=int, default=0)
    ap.add_argument("--fail-status", type=int, default=503)
    ap.add_argument("--ignore-conditions", action="store_true")
    args = ap.parse_args()
    counters = Counters(args.fail)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port),
                                             handler(urllib.parse.urlparse(args.upstream), counters, args.fail_status,
                                                     args.ignore_conditions))
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_stdin():
        # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts the
        # interpreter's shutdown.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
