"""Load check for the Gradio app: N concurrent gradio_client requests; all must finish with no server error.

    python benchmarks/app_load.py                         # a tiny random Llama, 50 requests, 32 new tokens each
    python benchmarks/app_load.py --model outputs/run --requests 50 --max-new-tokens 64
    python benchmarks/app_load.py --url http://127.0.0.1:7860/   # an app that is already running

The server runs as its own process (`python app/app.py`, exactly as a user starts it) with its default queue and
concurrency limits, so the numbers include queueing: with concurrency 2, request k waits for about k/2 others.
Prints p50/p95/max latency (submit to last token) and exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client

REPO = Path(__file__).resolve().parents[1]
PROMPT = "the cat sat on the mat and then"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, max_new_tokens: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-u", str(REPO / "app" / "app.py"), "--model", model, "--port", str(port)]
    command += ["--max-new-tokens", str(max_new_tokens)]
    log = open(log_path, "w")  # noqa: SIM115  (kept open for the server's lifetime)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while "Running on local URL" not in log_path.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the app did not start; its log:\n{log_path.read_text()}")
        time.sleep(0.2)
    return server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_load(url: str, requests: int, max_new_tokens: int) -> int:
    # httpx's 5 s default read timeout is shorter than a join can take on a saturated small machine; the queue,
    # not the client, should decide how long a request waits.
    client = Client(url, verbose=False, max_workers=requests, analytics_enabled=False, httpx_kwargs={"timeout": 120})
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def finished(job, started: float) -> None:
        elapsed = time.monotonic() - started
        with lock:
            try:
                _, status = job.result()
                latencies.append(elapsed)
                tokens.append(int(re.search(r"(\d+) new tokens", status).group(1)))
            except Exception as err:  # every failure is reported, none is retried
                errors.append(f"{type(err).__name__}: {err}")

    began = time.monotonic()
    jobs = []
    for _ in range(requests):
        started = time.monotonic()
        job = client.submit(PROMPT, 0.8, 0.95, 50, max_new_tokens, 1.0, api_name="/generate")
        job.add_done_callback(lambda job, started=started: finished(job, started))
        jobs.append(job)
    for job in jobs:
        try:
            job.result(timeout=600)
        except Exception:
            pass  # recorded by the callback
    time.sleep(0.2)  # let the last callbacks record
    wall = time.monotonic() - began
    print(f"{requests} concurrent requests, {max_new_tokens} new tokens each, against {url}")
    print(f"completed: {len(latencies)}  failed: {len(errors)}  wall: {wall:.1f} s")
    if latencies:
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        low, high, mean = min(latencies), max(latencies), statistics.mean(latencies)
        print(f"latency (s)  min {low:.2f}  p50 {p50:.2f}  p95 {p95:.2f}  max {high:.2f}  mean {mean:.2f}")
        print(f"throughput  {len(latencies) / wall:.2f} requests/s  {sum(tokens) / wall:.0f} new tokens/s")
    for error in sorted(set(errors)):
        print("error:", error)
    return 1 if errors or len(latencies) != requests else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Checkpoint to serve (default: a tiny random causal LM).")
    parser.add_argument("--url", help="Load an app that is already running instead of starting one.")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.url:
        return run_load(args.url, args.requests, args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPO / "tests"))  # the same tiny checkpoint builder the app tests use
            from tiny_checkpoints import build_causal_lm

            model = str(build_causal_lm(Path(tmp) / "tiny-causal"))
        port = free_port()
        server = start_server(model, port, args.max_new_tokens, Path(tmp) / "server.log")
        try:
            status = run_load(f"http://127.0.0.1:{port}/", args.requests, args.max_new_tokens)
        finally:
            server.terminate()
            server.wait(timeout=30)
        log = (Path(tmp) / "server.log").read_text()
        server_errors = [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]
        print(f"server log: {len(server_errors)} error lines")
        return status or (1 if server_errors else 0)


if __name__ == "__main__":
    sys.exit(main())
