"""Baseline load generator for the LLM benchmark: N chat completions against an OpenAI-compatible server.

Usage: load.py --base-url http://127.0.0.1:P/v1 --model smollm2 --concurrency C --rows N
               --max-tokens T --prompts FILE.jsonl [--column instruction]
Request i is {"model", "messages": [{"role": "user", "content": row_i[column]}], "max_tokens": T,
"temperature": 0, "seed": i}, sent by a pool of C threads, each with its own keep-alive connection.
Rows cycle if the file is shorter than N. Any non-200 answer aborts the run (exit status 1).
Prints one JSON line: {"requests", "concurrency", "seconds", "rows_per_s", "completion_tokens"}.
"""

import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--column", default="instruction")
    a = ap.parse_args()

    rows = [json.loads(l)[a.column] for l in open(a.prompts) if l.strip()]
    url = urllib.parse.urlsplit(a.base_url)
    path = url.path.rstrip("/") + "/chat/completions"
    local = threading.local()  # one http.client connection per worker thread, reused (keep-alive)

    def one(i):
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        body = json.dumps({
            "model": a.model,
            "messages": [{"role": "user", "content": rows[i % len(rows)]}],
            "max_tokens": a.max_tokens,
            "temperature": 0,
            "seed": i,
        })
        local.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = local.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"request {i}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
        try:
            tokens = sum(pool.map(one, range(a.rows)))
        except Exception as e:
            print(f"load.py: {e}", file=sys.stderr)
            pool.shutdown(cancel_futures=True)  # let only the requests in flight finish
            sys.exit(1)
    wall = time.perf_counter() - start
    print(json.dumps({
        "requests": a.rows,
        "concurrency": a.concurrency,
        "seconds": round(wall, 3),
        "rows_per_s": round(a.rows / wall, 3),
        "completion_tokens": tokens,
    }))


if __name__ == "__main__":
    main()
