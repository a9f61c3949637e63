"""Starting `eigenkv serve` and talking to it, for serve_load.py and serve_bench.py.

Python standard library only (urllib, subprocess), loopback only.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request


class Server:
    """`eigenkv serve --port 0 ...` as a child process; the port comes from its first line."""

    def __init__(self, binary, model, *args, threads=1):
        cmd = [binary, "serve", "-m", model, "--port", "0", "-t", str(threads), *map(str, args)]
        self.command = " ".join(cmd)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on http://([^:]+):(\d+)", line)
        if not match:
            err = self.proc.stderr.read()
            raise RuntimeError(f"the server did not start: {line!r} {err}")
        self.url = f"http://{match.group(1)}:{match.group(2)}"

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()


def post(url, path, body, timeout=300):
    """(status, text) of a POST; body is a dict (sent as JSON) or raw bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def get(url, path, timeout=30):
    try:
        with urllib.request.urlopen(url + path, timeout=timeout) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(url):
    """{sample name with labels: value} from /metrics."""
    out = {}
    for line in get(url, "/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stream_events(text):
    """The JSON events of a server-sent-event body, and whether it ended with [DONE]."""
    events, done = [], False
    for block in text.split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block[len("data: "):]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def machine():
    """One line naming the CPU and core count."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def wait_idle(url, seconds=10):
    """Waits until no sequence is active or queued; returns the final metrics."""
    end = time.time() + seconds
    while True:
        m = metrics(url)
        if (m.get("eigenkv_sequences_active", 1) == 0 and m.get("eigenkv_queue_length", 1) == 0) \
                or time.time() > end:
            return m
        time.sleep(0.05)
