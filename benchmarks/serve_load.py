"""Load test of the model server: N concurrent clients x M chat requests each.

    # against the running deployment (python run.py --pipeline deploy)
    python benchmarks/serve_load.py --clients 100 --requests 1
    # start servers itself and compare batching on (max batch 32) with batching off (max batch 1)
    python benchmarks/serve_load.py --model-uri models:/product-attribute-extractor@champion --compare-batching
    # ours (continuous and static batching) against `mlflow models serve` on the same registered model,
    # at 10 and 100 clients; without --model-uri the base model is registered into a temporary store
    python benchmarks/serve_load.py --compare-mlflow --clients 10 100 --min-requests 30 --max-tokens 16 \
        --markdown benchmarks/results-serve-load-cpu-2core.md
    # ours against llama.cpp's server on GGUFs (f16, q8_0) that llmft's exporter writes from the same
    # version (needs xllamacpp: pip install 'llmft[bench]')
    python benchmarks/serve_load.py --compare-mlflow --servers continuous llamacpp-f16 llamacpp-q8_0 \
        --clients 10 100 --min-requests 30 --max-tokens 16

Each client sends its requests one after another; all clients start together (with --min-requests,
each client sends enough that a level has at least that many). Requests are product listings with an
extraction instruction as the system turn, greedy, `--max-tokens` each (mlflow's server gets no
`temperature`: it refuses 0, and its default is greedy; llama.cpp's gets temperature 0 like ours, and
the same messages, rendered by the GGUF's copy of the trained chat template and checked token for token
against our rendering before it is measured). Prints p50/p95/max latency, requests/s,
generated tokens/s and errors (anything but HTTP 200 with a chat.completion). One server runs at a
time, each after a warm-up request.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # llamacpp_server, next to this script, also when imported
import llamacpp_server as llamacpp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the extraction task's instruction for data/products.jsonl (what tasks/extraction.instruction_for writes)
INSTRUCTION = ("Extract the fields from the text. Answer with only a JSON object with the keys brand, category, "
               "color, material, size, price. price is a number. Use null for anything not stated.")


def _prompts(count: int) -> list[list[dict[str, str]]]:
    records = [json.loads(line) for line in (ROOT / "data" / "products.jsonl").read_text().splitlines()]
    listings = [records[i % len(records)]["prompt"] for i in range(count)]
    return [[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}] for text in listings]


def _one(endpoint: str, messages: list[dict[str, str]], max_tokens: int,
         greedy: dict[str, Any]) -> tuple[float, bool, int, str]:
    from llmft.serve.deploy import post_json

    start = time.perf_counter()
    try:
        status, body = post_json(endpoint, {"messages": messages, "max_tokens": max_tokens, **greedy}, timeout=900)
    except OSError as exc:
        return time.perf_counter() - start, False, 0, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    if isinstance(body, list) and len(body) == 1:  # mlflow's server answers a list of one chat.completion
        body = body[0]
    ok = status == 200 and isinstance(body, dict) and body.get("object") == "chat.completion"
    tokens = body["usage"]["completion_tokens"] if ok else 0
    return seconds, ok, tokens, "" if ok else f"HTTP {status}: {str(body)[:120]}"


def load(endpoint: str, clients: int, requests: int, max_tokens: int,
         greedy: dict[str, Any] | None = None) -> dict[str, Any]:
    """`greedy`: what makes a request greedy on this server (ours: temperature 0; mlflow's: nothing)."""
    prompts = _prompts(clients * requests)
    greedy = {"temperature": 0} if greedy is None else greedy

    def client(c: int) -> list[tuple[float, bool, int, str]]:
        return [_one(endpoint, prompts[c * requests + r], max_tokens, greedy) for r in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    errors = [r[3] for r in results if not r[1]]
    tokens = sum(r[2] for r in results)
    answered = len(results) - len(errors)  # a timed-out or refused request is no throughput
    return {"clients": clients, "requests": len(results), "errors": len(errors), "error_examples": errors[:3],
            "wall_s": round(wall, 2), "requests_per_s": round(answered / wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "completion_tokens": tokens,
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            "max_s": round(latencies[-1], 2)}


def _health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
        return json.loads(resp.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tracking_uri() -> str:
    from llmft.locations import tracking_uri

    return os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri()


def _start_server(model_uri: str, max_batch_size: int, max_tokens: int, engine: str = "continuous",
                  share_prefixes: bool = True, precision: str = "auto") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    # the server takes its limits as one JSON of deploy.* keys (it has no per-limit flags)
    limits = {"max_batch_size": max_batch_size, "max_tokens": max(max_tokens, 16), "max_queue": 4096,
              # one-at-a-time runs take minutes: measured, not timed out
              "request_timeout_s": 3600, "engine": engine, "share_prefixes": share_prefixes,
              "precision": precision}
    proc = subprocess.Popen([sys.executable, "-m", "llmft.serve.app", "--model-uri", model_uri, "--port", str(port),
                             "--limits", json.dumps(limits)],
                            env={**os.environ, "MLFLOW_TRACKING_URI": _tracking_uri()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, _wait_up(proc, f"http://127.0.0.1:{port}", model_uri)


def _start_mlflow(model_uri: str) -> tuple[subprocess.Popen, str]:
    """MLflow's own scoring server on the same registered version, in this environment."""
    port = _free_port()
    log = Path(tempfile.gettempdir()) / f"mlflow-serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                # its default 60 s request timeout turns slow answers into 504s; ours gets 3600 too
                                env={**os.environ, "MLFLOW_TRACKING_URI": _tracking_uri(),
                                     "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "3600"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, _wait_up(proc, f"http://127.0.0.1:{port}", f"{model_uri} (mlflow; log {log})", path="/ping")


LLAMACPP = {"llama.cpp f16": "f16", "llama.cpp q8_0": "q8_0"}  # server name -> GGUF type exported for it


def _start_llamacpp(gguf: Path, parallel: int, ctx_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    """llama.cpp's server (benchmarks/llamacpp_server.py) on `gguf`, in its own process like the others,
    so its CPU time is measured the same way; --starts-only: it keeps the shared system turn as ours
    does, but answers no prompt this benchmark repeats (across levels) from a cache of whole prompts."""
    port = _free_port()
    log = Path(tempfile.gettempdir()) / f"llamacpp-serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "llamacpp_server.py"), "--model", str(gguf),
                                 "--port", str(port), "--parallel", str(parallel), "--ctx-size", str(ctx_size),
                                 "--threads", str(threads), "--starts-only"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, _wait_up(proc, f"http://127.0.0.1:{port}", f"{gguf.name} (llama.cpp; log {log})")


def _wait_up(proc: subprocess.Popen, base: str, what: str, path: str = "/health") -> str:
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=5):
                return base
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server for {what} exited with {proc.returncode}") from None
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"server for {what} did not come up")


def _cpu_seconds(root: int) -> float:
    """User+system CPU time of a process and all its descendants (Linux /proc). On a machine shared
    with other work, wall-clock throughput mostly measures how many threads a server runs (the kernel
    shares CPU per thread); CPU seconds per request measure what the server itself costs."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # after the command: state ppid ... utime(12) stime(13), 0-based from the state field
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(stats[pid][1] for pid in tree if pid in stats)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _register_base(home: Path) -> str:
    """The embedded base model as version 1 of a registered model in a temporary MLflow store (what
    `register` logs: transformers flavor, llm/v1/chat); sets MLFLOW_TRACKING_URI for the servers."""
    import mlflow

    from llmft.base_model import load_model, load_tokenizer, resolve_base_model
    from llmft.config import EMBEDDED_MODEL
    from llmft.registry.versions import register_model

    uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-load")
    path = resolve_base_model(EMBEDDED_MODEL)
    with mlflow.start_run():
        found = register_model(load_model(path), load_tokenizer(path), "serve-load-base", {"task": "extraction"})
    return found.model_uri


SERVERS = {"continuous": "ours continuous", "fp32": "ours continuous fp32",
           "unshared": "ours continuous, whole prompts", "static": "ours static",
           "mlflow": "mlflow models serve", "llamacpp-f16": "llama.cpp f16",
           "llamacpp-q8_0": "llama.cpp q8_0"}  # --servers choice -> name in the tables
OTHERS = {"mlflow models serve": "mlflow", "llama.cpp f16": "llama.cpp f16",
          "llama.cpp q8_0": "llama.cpp q8_0"}  # servers ours is compared with -> name in the ratios


def compare_mlflow(model_uri: str, client_levels: list[int], min_requests: int, max_tokens: int,
                   max_batch_size: int, only: list[str], earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each server in `only` in turn (ours continuous, ours static, mlflow models serve, llama.cpp on
    GGUFs of the same version) under each load level; `earlier`: results of a previous run whose other
    servers' rows are kept."""
    results: dict[str, Any] = earlier or {"model_uri": model_uri, "max_tokens": max_tokens,
                                          "max_batch_size": max_batch_size, "cpu_count": os.cpu_count(),
                                          "load_average_at_start": os.getloadavg()[0],
                                          "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), "runs": {}}
    with ExitStack() as stack:
        quants = [LLAMACPP[name] for name in LLAMACPP if name in only]
        gguf: dict[str, Any] = {}
        if quants:  # exported once per type before any server runs, so no measurement pays for it
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-load-gguf-")))
            every = _prompts(len((ROOT / "data" / "products.jsonl").read_text().splitlines()))
            gguf = llamacpp.prepare(model_uri, quants, out_dir, every, max_tokens, max_batch_size)
            results["llamacpp"] = {k: v for k, v in gguf.items() if k not in ("tokenizer", "gguf")}  # gguf: temp paths
            print(f"GGUF export ({', '.join(quants)}): {gguf['export_s']} s", flush=True)
        _run_servers(results, model_uri, client_levels, min_requests, max_tokens, max_batch_size, only, gguf)
    results["ratios"] = {}
    for clients in client_levels:
        for other, short in OTHERS.items():
            theirs = results["runs"].get(f"{other} @ {clients}")
            for name in [n for n in SERVERS.values() if n.startswith("ours")]:
                ours = results["runs"].get(f"{name} @ {clients}")
                if ours and theirs and theirs["requests_per_s"] and ours["p50_s"]:
                    results["ratios"][f"{name} / {short} @ {clients}"] = {
                        "requests_per_s": round(ours["requests_per_s"] / theirs["requests_per_s"], 2),
                        "tokens_per_s": round(ours["tokens_per_s"] / max(theirs["tokens_per_s"], 1e-9), 2),
                        "p50": round(ours["p50_s"] / theirs["p50_s"], 2),
                        "requests_per_cpu_s": round(ours["requests_per_cpu_s"] / theirs["requests_per_cpu_s"], 2),
                        "p95": round(ours["p95_s"] / theirs["p95_s"], 2)}
    return results


def _run_servers(results: dict[str, Any], model_uri: str, client_levels: list[int], min_requests: int,
                 max_tokens: int, max_batch_size: int, only: list[str], gguf: dict[str, Any]) -> None:
    """Start each server in `only` in turn, warm it up, measure each load level into results["runs"]."""
    ours = {"temperature": 0}
    # name -> (start, what makes a request greedy there, chat path)
    starters: dict[str, tuple[Any, dict[str, Any], str]] = {
        "ours continuous": (lambda: _start_server(model_uri, max_batch_size, max_tokens, "continuous"), ours,
                            "/invocations"),
        "ours continuous fp32": (  # deploy.precision=fp32: what auto picks on a CPU without native bf16
            lambda: _start_server(model_uri, max_batch_size, max_tokens, "continuous", precision="fp32"), ours,
            "/invocations"),
        "ours continuous, whole prompts": (  # the ablation: no shared prompt starts kept
            lambda: _start_server(model_uri, max_batch_size, max_tokens, "continuous", False), ours,
            "/invocations"),
        "ours static": (lambda: _start_server(model_uri, max_batch_size, max_tokens, "static"), ours, "/invocations"),
        "mlflow models serve": (lambda: _start_mlflow(model_uri), {}, "/invocations")}
    for name, quant in LLAMACPP.items():
        if quant in gguf.get("gguf", {}):  # as many slots as our largest batch, on our thread count
            starters[name] = (lambda q=quant: _start_llamacpp(Path(gguf["gguf"][q]), gguf["parallel"],
                                                              gguf["ctx_size"], gguf["threads"]),
                              ours, "/v1/chat/completions")
    most = max(max(1, math.ceil(min_requests / c)) * c for c in client_levels)  # prompts the largest level sends
    for name in [n for n in SERVERS.values() if n in only]:
        start, greedy, path = starters[name]
        started = time.perf_counter()
        proc, base = start()
        print(f"{name}: up in {time.perf_counter() - started:.0f} s", flush=True)
        try:
            if name in LLAMACPP:
                checked = llamacpp.check_prompts(base, gguf["tokenizer"], _prompts(most))
                results["llamacpp"]["prompts_checked"] = checked
                print(f"{name}: {checked} prompts rendered and tokenized as ours does", flush=True)
            if name.startswith("ours"):  # what deploy.precision resolved to on this machine
                results.setdefault("dtypes", {})[name] = _health(base).get("dtype")
            endpoint = f"{base}{path}"
            warm = load(endpoint, 1, 1, max_tokens, greedy)  # first-call costs (threads, caches) out of the numbers
            if warm["errors"]:
                raise SystemExit(f"{name}: warm-up request failed: {warm['error_examples']}")
            for clients in client_levels:
                requests = max(1, math.ceil(min_requests / clients))
                cpu_before = _cpu_seconds(proc.pid)
                r = load(endpoint, clients, requests, max_tokens, greedy)
                r["server_cpu_s"] = round(_cpu_seconds(proc.pid) - cpu_before, 1)
                r["requests_per_cpu_s"] = round((r["requests"] - r["errors"]) / max(r["server_cpu_s"], 0.01), 3)
                r["tokens_per_cpu_s"] = round(r["completion_tokens"] / max(r["server_cpu_s"], 0.01), 2)
                if name.startswith("ours"):
                    r["largest_batch"] = _health(base)["largest_batch"]
                r["load_average"] = round(os.getloadavg()[0], 1)
                results["runs"][f"{name} @ {clients}"] = r
                _print(f"{name} @{clients}", r)
        finally:
            _stop(proc)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Model `{results['model_uri']}` (the embedded base model registered as a transformers llm/v1/chat "
             f"version), greedy, up to {results['max_tokens']} tokens per answer, our max_batch_size "
             f"{results['max_batch_size']}, OMP_NUM_THREADS={results['torch_threads']} for every server, "
             + (f"ours in {', '.join(f'{d} ({n})' for n, d in results['dtypes'].items())}, "
                if results.get("dtypes") else "") +
             f"{results['cpu_count']} CPU cores shared with other work "
             f"(load average {results['load_average_at_start']:.1f} at start).", "",
             "| server @ clients | requests | errors | wall s | requests/s | tokens/s | p50 s | p95 s | max s "
             "| largest batch | server CPU s | requests/CPU-s | tokens/CPU-s | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if results.get("llamacpp"):
        lc = results["llamacpp"]
        lines[1:1] = ["", f"llama.cpp rows: llama-server (xllamacpp {lc['xllamacpp']}) on GGUFs that llmft's exporter "
                      f"wrote from the same version ({', '.join(f'{q} {mb} MB' for q, mb in lc['gguf_mb'].items())}), "
                      f"threads {lc['threads']} (as ours), {lc['parallel']} slots (our max_batch_size), "
                      f"context {lc['ctx_size']} tokens, temperature 0; the same messages, "
                      f"{lc.get('prompts_checked', '?')} distinct prompts checked to reach it as the same tokens "
                      "as ours (the GGUF's copy of the trained chat template)."]
    for name, r in results["runs"].items():
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['wall_s']} | {r['requests_per_s']} | "
                     f"{r['tokens_per_s']} | {r['p50_s']} | {r['p95_s']} | {r['max_s']} | "
                     f"{r.get('largest_batch', '')} | {r['server_cpu_s']} | {r['requests_per_cpu_s']} | "
                     f"{r['tokens_per_cpu_s']} | {r['load_average']} |")
    if results.get("ratios"):
        lines += ["", "| ours / other server | requests/s | tokens/s | p50 | p95 | requests per CPU-second |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, q in results["ratios"].items():
            lines.append(f"| {name} | {q['requests_per_s']}x | {q['tokens_per_s']}x | {q['p50']}x | {q['p95']}x | "
                         f"{q['requests_per_cpu_s']}x |")
    return "\n".join(lines) + "\n"


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"{name:<22}{r['requests']:>9}{r['errors']:>7}{r['p50_s']:>8.2f}{r['p95_s']:>8.2f}{r['max_s']:>8.2f}"
          f"{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>10.1f}{r.get('largest_batch', ''):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="default: the project's running deployment")
    parser.add_argument("--model-uri", help="start a server for this model instead (needed for --compare-batching)")
    parser.add_argument("--clients", type=int, nargs="+", default=[100], help="one or more load levels")
    parser.add_argument("--requests", type=int, default=1, help="per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32, help="for servers this script starts")
    parser.add_argument("--compare-batching", action="store_true", help="also run with batching off (batch 1)")
    parser.add_argument("--compare-mlflow", action="store_true",
                        help="ours (continuous, static) against `mlflow models serve` (and llama.cpp, see --servers) "
                             "on the same registered model")
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=["continuous", "static", "mlflow"],
                        help="with --compare-mlflow: which servers run (unshared: continuous without kept shared "
                             "prompt starts, deploy.share_prefixes=false; fp32: continuous with deploy.precision=fp32 "
                             "where the default, auto, serves bf16; llamacpp-*: llama.cpp's server on a GGUF "
                             "exported from the same version, --parallel = --max-batch-size, threads = ours; needs "
                             "pip install 'llmft[bench]')")
    parser.add_argument("--merge", help="with --compare-mlflow: a previous --json whose other servers' rows are kept "
                                        "(rerun one server without rerunning all)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="OMP_NUM_THREADS for every server started (the same for all; 0: torch's default). On a "
                             "shared 2-core machine 1 thread decodes ~4x faster than 2 (spinning threads)")
    parser.add_argument("--min-requests", type=int, default=0,
                        help="with --compare-mlflow: each client sends enough requests for at least this many")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="with --compare-mlflow: also write a results table here")
    args = parser.parse_args()
    if args.torch_threads:  # inherited by the servers this script starts, ours and mlflow's alike
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.torch_threads)

    if args.compare_mlflow:
        with tempfile.TemporaryDirectory(prefix="serve-load-") as home:
            model_uri = args.model_uri or _register_base(Path(home))
            only = [SERVERS[choice] for choice in args.servers]
            earlier = json.loads(Path(args.merge).read_text()) if args.merge else None
            results = compare_mlflow(model_uri, args.clients, max(args.min_requests, args.requests), args.max_tokens,
                                     args.max_batch_size, only, earlier)
            results.setdefault("commands", []).append(f"python benchmarks/serve_load.py {' '.join(sys.argv[1:])}")
        for name, q in results.get("ratios", {}).items():
            print(f"{name}: {q['requests_per_s']}x requests/s, p50 {q['p50']}x")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if args.markdown:
            commands = "".join(f"    {c}\n" for c in results["commands"])
            others = " and llama.cpp" if results.get("llamacpp") else ""
            Path(args.markdown).write_text(f"# Serving load: ours vs `mlflow models serve`{others}\n\n{commands}\n"
                                           + markdown(results))
        return
    args.clients = args.clients[0]

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
