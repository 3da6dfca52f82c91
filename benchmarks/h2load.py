"""Drives gRPC calls with h2load (Debian package nghttp2-client, ~60 us of CPU per call, far
cheaper than a Python client), and installs it when it is missing and we may.

A gRPC request is an HTTP/2 POST of length-prefixed messages: h2load posts the same body on
every stream. One message in the body makes a unary call; many messages make a bidirectional
stream that carries them all (HeartbeatStream). h2load sees only HTTP statuses, never
grpc-status, so the suite counts gRPC errors on the server side (see scenarios.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from array import array
from dataclasses import dataclass

SERVICE = "/service_registry.ServiceRegistry/"


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def available() -> bool:
    return shutil.which("h2load") is not None


def install(log) -> bool:
    """apt-get install nghttp2-client, when we are root and apt-get exists. True on success."""
    if available():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log("h2load not found and cannot install it (not root or no apt-get): "
            "using Python load generators for unary calls")
        return False
    log("h2load not found: installing nghttp2-client with apt-get (--no-install-tools skips)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        try:
            subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180,
                           check=True)
            break
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if attempt == 0:  # package lists may be missing on a fresh machine
                subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=180)
    if not available():
        log("could not install nghttp2-client: using Python load generators for unary calls")
        return False
    return True


@dataclass
class H2Result:
    requests: int           # streams completed in the measured window
    seconds: float          # measured window
    failed: int             # h2load's failed + errored + timeout, and non-2xx statuses
    latencies_ms: array     # per stream, for streams started in the window
    cpu_seconds: float      # h2load's own CPU (user + system)
    output: str


def run(address: str, method: str, body: bytes, *, clients: int, streams: int,
        duration: float = 0.0, warmup: float = 0.0, count: int = 0, threads: int = 1,
        rps: float | None = None, timeout: float | None = None) -> H2Result:
    """Runs h2load for warmup + duration seconds, or for `count` streams (blocking: call it
    in an executor)."""
    with tempfile.TemporaryDirectory(prefix="sr-h2load-") as tmp:
        data = os.path.join(tmp, "body.bin")
        log = os.path.join(tmp, "requests.log")
        with open(data, "wb") as f:
            f.write(body)
        if count:
            clients = min(clients, count)
            length = ["-n", str(count)]
            warmup = 0.0
        else:
            length = ["-D", f"{max(int(duration * 1000), 100)}ms"]
            if warmup > 0:
                length += ["--warm-up-time", f"{int(warmup * 1000)}ms"]
        cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", str(threads), *length,
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-d", data, "--log-file", log, f"http://{address}{SERVICE}{method}"]
        if rps:
            cmd[1:1] = ["--rps", f"{rps:.2f}"]
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout or (warmup + duration + 60))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        text = out.decode(errors="replace")
        summary = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
        counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
        statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        if not summary or not counts:
            raise RuntimeError(f"h2load failed ({' '.join(cmd)}):\n{text[-2000:]}")
        done = int(counts.group(4))
        # With --warm-up-time, counts and req/s cover the main duration only ("finished in"
        # includes the warm-up).
        reqps = float(summary.group(3))
        seconds = done / reqps if reqps > 0 else duration
        failed = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
        if statuses:
            failed += int(statuses.group(3)) + int(statuses.group(4))
        window_start_us = (started + warmup) * 1e6
        latencies = array("d")
        try:
            with open(log) as f:
                for line in f:
                    parts = line.split("\t")
                    if len(parts) >= 3 and float(parts[0]) >= window_start_us:
                        latencies.append(float(parts[2]) / 1000.0)
        except OSError:
            pass
        return H2Result(requests=done, seconds=seconds, failed=failed, latencies_ms=latencies,
                        cpu_seconds=0.0, output=text)


def run_measured(*args, **kwargs) -> H2Result:
    """run() plus h2load's CPU, from the RUSAGE_CHILDREN delta around it."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(*args, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
