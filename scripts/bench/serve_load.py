#!/usr/bin/env python3
"""Bounded load test of `eigenkv serve` on loopback.

Starts the server (or uses --url), sends --requests requests from --clients threads: plain,
streamed, echo+logprobs and chat completions, bad input (must get 400) and clients that hang up
mid-stream. Stops by itself (--time-limit). Fails (exit 1) on any unexpected status, a stream
without [DONE], KV memory still in use or sequences still active afterwards, /health not OK, or
a server that does not exit 0 on SIGTERM.

    python3 scripts/bench/serve_load.py                       # stories260K, 1000 requests
    python3 scripts/bench/serve_load.py --requests 5000 --clients 32
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_client as sc  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def hang_up(url, body):
    """Sends a streamed request, reads its first bytes, closes the connection."""
    u = urllib.parse.urlparse(url)
    data = json.dumps(body).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        s.recv(64)
    return "hung up"


def one_request(url, i, max_tokens):
    """Sends request i of the mix; returns None when it went as expected, else a message."""
    kind = i % 10
    prompt = f"Once upon a time {i}"
    if kind == 0:
        status, text = sc.post(url, "/v1/completions", {"prompt": prompt, "max_tokens": -1})
        return None if status == 400 and "error" in json.loads(text) else f"bad input: {status}"
    if kind == 1:
        status, text = sc.post(url, "/v1/completions", b"{\"prompt\": \"caf\xe9\"}")
        return None if status == 400 else f"non-UTF-8: {status}"
    if kind == 2:
        hang_up(url, {"prompt": prompt, "max_tokens": 200, "stream": True, "ignore_eos": True})
        return None
    if kind in (3, 4):
        status, text = sc.post(url, "/v1/completions",
                               {"prompt": prompt, "max_tokens": max_tokens, "stream": True,
                                "seed": i})
        events, done = sc.stream_events(text)
        return None if status == 200 and done and events else f"stream: {status} {text[:200]}"
    if kind == 5:
        status, text = sc.post(url, "/v1/completions",
                               {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1,
                                "temperature": 0})
        ok = status == 200 and json.loads(text)["choices"][0]["logprobs"]["token_logprobs"][0] \
            is None
        return None if ok else f"echo: {status} {text[:200]}"
    if kind == 6:
        status, text = sc.post(url, "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "seed": i})
        return None if status == 200 else f"chat: {status} {text[:200]}"
    status, text = sc.post(url, "/v1/completions",
                           {"prompt": prompt, "max_tokens": max_tokens, "seed": i})
    return None if status == 200 else f"completion: {status} {text[:200]}"


def run(url, args):
    errors, latencies = [], []
    lock = threading.Lock()
    next_index = [0]
    deadline = time.time() + args.time_limit

    def client():
        while time.time() < deadline:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= args.requests:
                return
            t0 = time.time()
            try:
                problem = one_request(url, i, args.max_tokens)
            except Exception as e:  # a refused or dropped connection is an error too
                problem = f"request {i}: {e!r}"
            with lock:
                latencies.append(time.time() - t0)
                if args.verbose and latencies[-1] > 0.5:
                    print(f"slow: request {i} (kind {i % 10}) took {latencies[-1]:.2f} s")
                if problem:
                    errors.append(problem)

    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    m = sc.wait_idle(url)
    latencies.sort()
    done = len(latencies)
    print(f"{done} requests from {args.clients} clients in {wall:.1f} s "
          f"({done / wall:.0f} requests/s); latency p50 {latencies[done // 2] * 1e3:.1f} ms, "
          f"p99 {latencies[min(done - 1, int(done * 0.99))] * 1e3:.1f} ms")
    disconnects = m.get('eigenkv_sequences_finished_total{reason="disconnect"}', 0)
    print(f"generated tokens {m.get('eigenkv_generated_tokens_total', 0):.0f}, "
          f"disconnects {disconnects:.0f}, peak active {m.get('eigenkv_sequences_active_peak', 0):.0f}")
    if done < args.requests:
        errors.append(f"only {done} of {args.requests} requests ran before the time limit")
    for key in ("eigenkv_kv_bytes_in_use", "eigenkv_kv_bytes_filled", "eigenkv_sequences_active",
                "eigenkv_queue_length"):
        if m.get(key) != 0:
            errors.append(f"{key} is {m.get(key)} after the load, not 0")
    if sc.get(url, "/health")[0] != 200:
        errors.append("/health is not OK after the load")
    return errors


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "eigenkv"))
    p.add_argument("--model", default=os.path.join(ROOT, "..", "shared", "models",
                                                   "stories260K.gguf"))
    p.add_argument("--url", help="use a running server instead of starting one")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--verbose", action="store_true", help="name requests slower than 0.5 s")
    p.add_argument("--time-limit", type=float, default=300, help="seconds; stops by itself")
    args = p.parse_args()
    if args.url:
        errors = run(args.url.rstrip("/"), args)
    else:
        with sc.Server(args.binary, args.model, "--ctx", 256, "--parallel", 16) as server:
            errors = run(server.url, args)
            status = server.stop()
            if status != 0:
                errors.append(f"the server exited with {status} on SIGTERM")
    for e in errors[:20]:
        print("error:", e)
    print("FAILED" if errors else "OK: no errors, no KV memory left in use")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
