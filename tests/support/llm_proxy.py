"""Request-counting, fault-injecting HTTP proxy in front of an OpenAI-compatible server, for end-to-end tests.

Usage:
  llm_proxy.py --port-file F (--upstream http://127.0.0.1:P | --serve-gguf PATH --runtime DIR [--parallel N])
               [--fail N] [--fail-statuses 500,429] [--retry-after SECONDS] [--strip-logprobs]

Listens on 127.0.0.1 (a free port) and writes that port to F (atomically) once it serves, and, with
--serve-gguf, once the in-process llama.cpp server (xllamacpp, imported from DIR) answers /health 200.
Every request is forwarded to upstream, except the first N POSTs to a path ending in /completions,
which get the statuses of --fail-statuses in turn (429 with Retry-After). --strip-logprobs removes
`logprobs` from every choice of a completions answer: a mock of a server that sends none. Control endpoints:
  GET  /_proxy/stats  {"forwarded", "faulted", "by_body": {sha256(body): forwarded}, "max_per_body",
                       "resent_after_answer": forwarded requests whose body had already been answered (200),
                       "authorization": {Authorization header as received ("" when absent): requests}}
  POST /_proxy/reset  zeroes the counters (which also re-arms the --fail faults)
A completions POST counts as forwarded once sent upstream, whatever upstream answers.
Exits on SIGTERM/SIGINT and when stdin reaches EOF (so a parent holding a stdin pipe never leaks it;
by hand, keep stdin open: `sleep infinity | python3 llm_proxy.py ...`).
Standard library only.
"""

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}


def free_port():
    # Small race between close and the server binding it; fine on a test machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_port_file(path, port):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def exit_on_stdin_eof_or_sigterm():
    """os._exit ends the process at once, including the C++ threads of an in-process llama.cpp server."""
    def watch():
        while sys.stdin.buffer.read1(65536):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))


def start_llama_server(gguf, runtime_dir, parallel, timeout=300.0):
    """Starts llama.cpp's server in this process on a free port; returns (server, base_url) once /health is 200.
    The caller must keep `server` referenced: dropping it stops the server."""
    sys.path.insert(0, runtime_dir)
    import xllamacpp as xlc

    port = free_port()
    p = xlc.CommonParams()
    p.model.path = gguf
    p.n_parallel = parallel
    p.n_ctx = 2048 * parallel  # 2048 tokens per slot
    p.port = port
    p.hostnames = ["127.0.0.1"]
    p.cpuparams.n_threads = 1  # one compute thread: the machines running tests are small and shared
    p.cpuparams_batch.n_threads = 1
    p.model_alias = ["smollm2"]
    server = xlc.Server(p)  # serves from background threads
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return server, base
        except (urllib.error.URLError, OSError):  # 503 while loading, or not listening yet
            pass
        if time.monotonic() > deadline:
            print(f"llama.cpp server on port {port} not healthy after {timeout}s", file=sys.stderr)
            os._exit(1)
        time.sleep(0.1)


class Counters:
    def __init__(self, fail, statuses):
        self.lock = threading.Lock()
        self.fail, self.statuses = fail, statuses
        self.reset()

    def reset(self):
        with self.lock:
            self.forwarded, self.faulted, self.by_body = 0, 0, {}
            self.answered, self.resent_after_answer = set(), 0
            self.authorization = {}

    def saw(self, authorization):
        """Counts one request to the API (any path but the control endpoints) by its Authorization header."""
        with self.lock:
            key = authorization or ""
            self.authorization[key] = self.authorization.get(key, 0) + 1

    def admit(self, body):
        """Counts one completions POST; returns a status to fault it with, or None to forward it."""
        with self.lock:
            if self.faulted < self.fail:
                status = self.statuses[self.faulted % len(self.statuses)]
                self.faulted += 1
                return status
            self.forwarded += 1
            h = hashlib.sha256(body).hexdigest()
            self.by_body[h] = self.by_body.get(h, 0) + 1
            if h in self.answered:
                self.resent_after_answer += 1
            return None

    def delivered(self, body):
        """Records that a 200 answer to this body reached the client in full."""
        with self.lock:
            self.answered.add(hashlib.sha256(body).hexdigest())

    def stats(self):
        with self.lock:
            return {
                "forwarded": self.forwarded,
                "faulted": self.faulted,
                "by_body": dict(self.by_body),
                "max_per_body": max(self.by_body.values(), default=0),
                "resent_after_answer": self.resent_after_answer,
                "authorization": dict(self.authorization),
            }


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response below carries Content-Length or is chunked
    upstream = None  # urllib.parse.SplitResult, set in main
    counters = None
    retry_after = "1"
    strip_logprobs = False

    def log_message(self, fmt, *args):
        pass  # quiet; tests read stderr for real errors

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status, obj, extra=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        body = self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_proxy/stats" and self.command == "GET":
            return self.send_json(200, self.counters.stats())
        if path == "/_proxy/reset" and self.command == "POST":
            self.counters.reset()
            return self.send_json(200, {"ok": True})
        self.counters.saw(self.headers.get("Authorization"))
        if self.command == "POST" and path.endswith("/completions"):
            status = self.counters.admit(body)
            if status is not None:
                extra = [("Retry-After", self.retry_after)] if status == 429 else []
                err = {"error": {"message": f"injected fault ({status})", "type": "proxy_fault", "code": status}}
                return self.send_json(status, err, extra)
        status = self.forward(body)
        if status == 200 and self.command == "POST" and path.endswith("/completions"):
            self.counters.delivered(body)

    def forward(self, body):
        """Forwards the request and relays the answer; returns the upstream status (None: no answer)."""
        # A fresh upstream connection per request: cheap on localhost, and never a stale one.
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=600)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length")}
            target = self.upstream.path.rstrip("/") + self.path
            conn.request(self.command, target, body=body if body or self.command in ("POST", "PUT", "PATCH") else None,
                         headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            self.send_json(502, {"error": {"message": f"upstream: {e}", "type": "proxy_upstream"}})
            return None
        try:
            self.relay(resp)
        finally:
            conn.close()
        return resp.status

    def relay(self, resp):
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        if no_body:
            self.send_header("Content-Length", length or "0")
            self.end_headers()
        elif length is not None:  # whole body, same length (unless logprobs are stripped)
            data = resp.read()
            if self.strip_logprobs and resp.status == 200 and self.path.rstrip("/").endswith("/completions"):
                answer = json.loads(data)
                for choice in answer.get("choices", []):
                    choice.pop("logprobs", None)
                data = json.dumps(answer).encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:  # unknown length (e.g. SSE with stream=true): re-chunk as it arrives
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


class Listener(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog (default 5) for bursts of concurrent clients
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--upstream", help="base URL, e.g. http://127.0.0.1:8080")
    src.add_argument("--serve-gguf", help="start llama.cpp (xllamacpp) in-process on this model")
    ap.add_argument("--runtime", help="directory holding the xllamacpp package (with --serve-gguf)")
    ap.add_argument("--parallel", type=int, default=4, help="server slots (with --serve-gguf)")
    ap.add_argument("--fail", type=int, default=0, help="fault the first N completions POSTs")
    ap.add_argument("--fail-statuses", default="500,429")
    ap.add_argument("--retry-after", default="1", help="Retry-After seconds sent with 429")
    ap.add_argument("--strip-logprobs", action="store_true", help="drop `logprobs` from completions answers")
    a = ap.parse_args()

    exit_on_stdin_eof_or_sigterm()
    server = None
    if a.serve_gguf:
        if not a.runtime:
            ap.error("--serve-gguf needs --runtime")
        server, a.upstream = start_llama_server(a.serve_gguf, a.runtime, a.parallel)

    Proxy.upstream = urllib.parse.urlsplit(a.upstream)
    Proxy.counters = Counters(a.fail, [int(s) for s in a.fail_statuses.split(",")])
    Proxy.retry_after = a.retry_after
    Proxy.strip_logprobs = a.strip_logprobs
    httpd = Listener(("127.0.0.1", 0), Proxy)  # listening from here on
    write_port_file(a.port_file, httpd.server_address[1])
    httpd.serve_forever()
    del server  # unreachable; keeps the llama.cpp server referenced


if __name__ == "__main__":
    main()
