"""A bounded load test of ``xsam serve`` on loopback: latency percentiles, throughput, errors and peak
memory under concurrent clients, cached vs uncached images, and a flood beyond the queue.

It starts ``xsam serve`` (the bundled default model unless ``--model``) on 127.0.0.1, then measures
and prints one table:

- uncached: every request carries a new image inline (the server encodes it, then answers);
- cached: ``--images`` images uploaded once, then prompts by ``image_id`` (encoders and prefill skipped);
- both again from a single client, where a request waits for no other;
- flood: ``--flood`` simultaneous requests against a ``--queue`` of 8: the ones beyond the queue must be
  refused with 503 quickly, and the server must answer normally afterwards.

Prompts rotate over referring, interactive, generic and a short chat.

    python benchmarks/serve_load.py                      # 8 clients, 240 requests, default model
    python benchmarks/serve_load.py --clients 4 --requests 80 --model path/to/model
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import xsam

EXAMPLES = Path(xsam.__file__).parent / "assets" / "examples"
PROMPTS = [
    {"task": "referring", "text": "the large red hexagon"},
    {"task": "interactive", "points": [[78, 115]]},
    {"task": "generic", "categories": "ins: circle, square, triangle, star, hexagon, cross; sem: sky, grass"},
    {"task": "chat", "text": "How many shapes are there?", "max_new_tokens": 16},
]


def images(count: int) -> list[bytes]:
    """``count`` distinct PNGs: the bundled example scenes, flipped, rotated and tinted."""
    bases = [Image.open(path).convert("RGB") for path in sorted(EXAMPLES.glob("*.jpg"))]
    result = []
    for index in range(count):
        image = bases[index % len(bases)].rotate(90 * (index // len(bases) % 4))
        array = np.asarray(image).astype(np.int16) + (index // (4 * len(bases))) * 3
        buffer = io.BytesIO()
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        result.append(buffer.getvalue())
    return result


def start_server(model: str, port: int, queue: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "xsam.cli", "serve", "--model", model, "--port", str(port)]
    command += ["--queue", str(queue), "--timeout", "600"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_ready(base: str, server: subprocess.Popen, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"xsam serve exited: {server.stderr.read()}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise SystemExit(f"xsam serve did not become ready within {limit:g} s")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (Linux ``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(base: str, bodies: list[dict], clients: int) -> dict:
    """Send ``bodies`` to /v1/predict from ``clients`` threads sharing one connection pool:
    ``(status, seconds)`` each, and the wall time."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=base, timeout=600, limits=limits) as http:

        def send(body: dict) -> tuple[int, float]:
            start = time.perf_counter()
            try:
                status = http.post("/v1/predict", json=body).status_code
            except httpx.HTTPError:
                status = 0  # no answer at all
            return status, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(send, bodies))
        return {"results": results, "wall": time.perf_counter() - start}


def seconds_of(phase: dict, status: int) -> list[float]:
    return [seconds for code, seconds in phase["results"] if code == status]


def row(name: str, clients: int, phase: dict) -> str:
    answered = seconds_of(phase, 200)
    p50, p95, p99 = (float(np.percentile(answered, q)) * 1000 for q in (50, 95, 99))
    errors = len(phase["results"]) - len(answered)
    rate = len(answered) / phase["wall"]
    cells = [
        name,
        clients,
        len(phase["results"]),
        f"{p50:.0f}",
        f"{p95:.0f}",
        f"{p99:.0f}",
        f"{rate:.2f}",
        errors,
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=240, help="per measured phase, split evenly")
    parser.add_argument("--images", type=int, default=16, help="distinct images")
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--flood", type=int, default=64, help="simultaneous requests of the flood")
    args = parser.parse_args()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, args.queue)
    try:
        wait_until_ready(base, server)
        half, alone = args.requests // 2, max(4, args.requests // 12)
        pictures = [base64.b64encode(data).decode() for data in images(half + alone + args.images)]
        new_images, later_images, kept_images = (
            pictures[:half],
            pictures[half : half + alone],
            pictures[half + alone :],
        )
        # uncached: every request brings an image the server has not seen
        uncached_bodies = [{"image": new_images[i], **PROMPTS[i % len(PROMPTS)]} for i in range(half)]
        uncached = run_phase(base, uncached_bodies, args.clients)
        # cached: a set of images uploaded once, then prompts by id
        ids = [
            httpx.post(f"{base}/v1/images", json={"image": picture}, timeout=600).json()["image_id"]
            for picture in kept_images
        ]
        cached_bodies = [{"image_id": ids[i % len(ids)], **PROMPTS[i % len(PROMPTS)]} for i in range(half)]
        cached = run_phase(base, cached_bodies, args.clients)
        # one client at a time: what a request costs when it waits for no other
        lone_uncached = run_phase(
            base, [{"image": later_images[i], **PROMPTS[i % len(PROMPTS)]} for i in range(alone)], 1
        )
        lone_cached = run_phase(base, cached_bodies[:alone], 1)
        cache = httpx.get(f"{base}/ready", timeout=60).json()

        flood_bodies = [{"image_id": ids[0], **PROMPTS[0]} for _ in range(args.flood)]
        flood = run_phase(base, flood_bodies, args.flood)
        refused = seconds_of(flood, 503)
        recovered = httpx.post(f"{base}/v1/predict", json=cached_bodies[0], timeout=600).status_code
        rss = peak_rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(60)

    print(f"xsam serve --model {args.model}: {os.cpu_count()} CPUs, queue {args.queue}")
    print()
    print("| phase | clients | requests | p50 ms | p95 ms | p99 ms | answers/s | errors |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("uncached (new image inline)", args.clients, uncached))
    print(row("cached (image_id)", args.clients, cached))
    print(row("uncached (new image inline)", 1, lone_uncached))
    print(row("cached (image_id)", 1, lone_cached))
    lone = [statistics.median(seconds_of(phase, 200)) for phase in (lone_uncached, lone_cached)]
    statuses = {code for code, _ in flood["results"]}
    print()
    print(f"median latency, one client: uncached / cached = {lone[0] / lone[1]:.1f}x")
    print(
        f"flood of {args.flood} at once: {len(refused)} refused with 503 (median refusal "
        f"{1000 * statistics.median(refused or [0]):.0f} ms, "
        f"slowest {1000 * max(refused, default=0):.0f} ms), "
        f"{len(seconds_of(flood, 200))} answered, "
        f"other statuses {sorted(statuses - {200, 503})}; after it: {recovered}; server alive: {alive}"
    )
    print(f"image cache at the end: {cache['cached_images']} images, {cache['cache_bytes'] / 2**20:.0f} MiB")
    print(f"peak RSS of the server: {rss:.0f} MB")


if __name__ == "__main__":
    main()
