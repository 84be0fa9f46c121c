"""Load test of the model server: N concurrent clients x M chat requests each.

    # against the running deployment (python run.py --pipeline deploy)
    python benchmarks/serve_load.py --clients 100 --requests 1
    # start servers itself and compare batching on (max batch 32) with batching off (max batch 1)
    python benchmarks/serve_load.py --model-uri models:/product-attribute-extractor@champion --compare-batching

Each client sends its requests one after another; all clients start together. Requests are the
product task's prompts (instruction + listing), greedy, `--max-tokens` each. Prints p50/p95/max
latency, requests/s, generated tokens/s and errors (anything but HTTP 200 with a chat.completion).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _prompts(count: int) -> list[list[dict[str, str]]]:
    from llmft.tasks.extraction import INSTRUCTION

    records = [json.loads(line) for line in (ROOT / "data" / "products.jsonl").read_text().splitlines()]
    listings = [records[i % len(records)]["prompt"] for i in range(count)]
    return [[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}] for text in listings]


def _one(endpoint: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, bool, int, str]:
    from llmft.serve.deploy import post_json

    start = time.perf_counter()
    try:
        status, body = post_json(endpoint, {"messages": messages, "max_tokens": max_tokens, "temperature": 0},
                                 timeout=900)
    except OSError as exc:
        return time.perf_counter() - start, False, 0, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    ok = status == 200 and isinstance(body, dict) and body.get("object") == "chat.completion"
    tokens = body["usage"]["completion_tokens"] if ok else 0
    return seconds, ok, tokens, "" if ok else f"HTTP {status}: {str(body)[:120]}"


def load(endpoint: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    prompts = _prompts(clients * requests)

    def client(c: int) -> list[tuple[float, bool, int, str]]:
        return [_one(endpoint, prompts[c * requests + r], max_tokens) for r in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    errors = [r[3] for r in results if not r[1]]
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "requests": len(results), "errors": len(errors), "error_examples": errors[:3],
            "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "completion_tokens": tokens,
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            "max_s": round(latencies[-1], 2)}


def _health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
        return json.loads(resp.read())


def _start_server(model_uri: str, max_batch_size: int, max_tokens: int) -> tuple[subprocess.Popen, str]:
    from llmft.locations import tracking_uri

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server takes its limits as one JSON of deploy.* keys (it has no per-limit flags)
    limits = {"max_batch_size": max_batch_size, "max_tokens": max(max_tokens, 16), "max_queue": 4096,
              "request_timeout_s": 3600}  # one-at-a-time runs take minutes; measured, not timed out
    proc = subprocess.Popen([sys.executable, "-m", "llmft.serve.app", "--model-uri", model_uri, "--port", str(port),
                             "--limits", json.dumps(limits)],
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            _health(base)
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server for {model_uri} exited with {proc.returncode}") from None
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("server did not come up")


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"{name:<22}{r['requests']:>9}{r['errors']:>7}{r['p50_s']:>8.2f}{r['p95_s']:>8.2f}{r['max_s']:>8.2f}"
          f"{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>10.1f}{r.get('largest_batch', ''):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="default: the project's running deployment")
    parser.add_argument("--model-uri", help="start a server for this model instead (needed for --compare-batching)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1, help="per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32, help="for servers this script starts")
    parser.add_argument("--compare-batching", action="store_true", help="also run with batching off (batch 1)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    results: dict[str, Any] = {"clients": args.clients, "requests_per_client": args.requests,
                               "max_tokens": args.max_tokens}
    runs: list[tuple[str, int | None]] = []
    if args.model_uri:
        runs.append((f"batched (max {args.max_batch_size})", args.max_batch_size))
        if args.compare_batching:
            runs.append(("one at a time", 1))
    else:
        from llmft.serve import deploy as serving

        dep = serving.current()
        endpoint = args.endpoint or (dep.endpoint if dep else None)
        if not endpoint:
            raise SystemExit("no --endpoint and no running deployment (python run.py --pipeline deploy)")
        runs.append((endpoint, None))

    print(f"{args.clients} concurrent clients x {args.requests} request(s), up to {args.max_tokens} tokens each")
    print(f"{'server':<22}{'requests':>9}{'errors':>7}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'req/s':>8}"
          f"{'tokens/s':>10}{'batch':>9}")
    for name, batch in runs:
        proc = None
        if batch is not None:
            proc, base = _start_server(args.model_uri, batch, args.max_tokens)
            endpoint = f"{base}/v1/chat/completions"
        try:
            r = load(endpoint, args.clients, args.requests, args.max_tokens)
            parts = urllib.parse.urlsplit(endpoint)
            try:
                r["largest_batch"] = _health(f"{parts.scheme}://{parts.netloc}")["largest_batch"]
            except OSError:
                pass
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        results[name] = r
        _print(name, r)
    if len(runs) == 2:
        a, b = (results[n] for n, _ in runs)
        results["throughput_ratio"] = round(a["requests_per_s"] / b["requests_per_s"], 2)
        print(f"batching: {results['throughput_ratio']}x the requests/s of one at a time")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
