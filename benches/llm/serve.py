"""Starts only llama.cpp's OpenAI-compatible server (xllamacpp, in-process, one compute thread) for the LLM benchmark.

Usage: serve.py --gguf PATH --runtime DIR [--parallel N] --port-file F
Writes the server's port to F (atomically) once /health is 200, then serves until stdin reaches EOF or
SIGTERM/SIGINT. By hand, keep stdin open: `sleep infinity | python3 serve.py ...`.
Shares its code with tests/support/llm_proxy.py (the same server, without the proxy in front).
"""

import argparse
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "support"))
from llm_proxy import exit_on_stdin_eof_or_sigterm, start_llama_server, write_port_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--runtime", required=True, help="directory holding the xllamacpp package")
    ap.add_argument("--parallel", type=int, default=4, help="server slots (n_ctx = 2048 per slot)")
    ap.add_argument("--port-file", required=True)
    a = ap.parse_args()

    exit_on_stdin_eof_or_sigterm()
    server, base = start_llama_server(a.gguf, a.runtime, a.parallel)
    write_port_file(a.port_file, urllib.parse.urlsplit(base).port)
    while server is not None:  # the exit paths call os._exit
        time.sleep(3600)


if __name__ == "__main__":
    main()
