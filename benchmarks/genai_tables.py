"""Issue 25: how long logging the per-row GenAI evaluation tables takes, and which ways keep the UI's view.

    python benchmarks/genai_tables.py [--repeats 2] [--server] [--out benchmarks/results-genai-tables-cpu-2core.json]

What `compare_models` logs: 4 models (base, few-shot base, fine-tuned, champion) x 20 rows (input ~300
characters, reference and answer ~100, 8 per-row scores), each variant in its own process on a fresh
temporary sqlite store (`--server`: also on a local `mlflow server` over sqlite, for the variants that
matter there). Timed: the logging call only (lazy imports such as `mlflow.genai` included, as the step
pays them); not timed: the check after it. Variants:

- harness: the code before issue 25, `mlflow.genai.evaluate(data, scorers)` per model, 2 harness threads
  on a database store (kept here verbatim as `legacy_tables`);
- harness-10-workers-pool-40: the same with the harness's default 10 threads and a SQLAlchemy pool big
  enough for them (MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=20, MAX_OVERFLOW=20);
- harness-one-run: one `mlflow.genai.evaluate` holding all 4 models' rows (80 rows, the model an input);
- fluent-no-harness: a trace per row through `mlflow.start_span`, then `mlflow.log_assessment` per score
  and per reference (the public fluent API, no harness);
- direct (implemented): `llmft.evaluate.genai_tables.log_genai_evaluations`: per row one `start_trace`
  carrying the reference and the scores as assessments, one `log_spans` per table, one read-back;
- direct-2-threads: the same with the `start_trace` calls on 2 threads;
- log-table-only: `mlflow.log_table` of each model's rows (an artifact; no evaluation view).

The check, as the UI reads a run's evaluation table (its traces searched with `attributes.run_id =
'<run>'`, the filter the UI's evaluation tab sends): a row is back when its trace has the root span with
the row's input and answer, the reference as `expected_response` and all 8 scores. `ui_view` says what
the UI's evaluation view can show: `per-model, comparable` (one `genai_evaluate` run per model whose
every row is back: the run's evaluation tab and compare-to-run), `one run, not per model`, or `none`.
Printed and written: seconds (each repeat and median), rows back of rows asked, and the ratio of each
median to the harness's median in the same invocation (same store kind).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS, ROWS, SCORES = 4, 20, ["rouge_l", "rouge_1", "rouge_2", "bleu", "chrf", "exact_match", "token_f1",
                               "length_ratio"]
ROLES = ["base", "base_few_shot", "finetuned", "champion"]
VARIANTS = ["harness", "harness-10-workers-pool-40", "harness-one-run", "fluent-no-harness", "direct",
            "direct-2-threads", "log-table-only"]
SERVER_VARIANTS = ["harness", "direct"]
CHILD_ENV = {"harness-10-workers-pool-40": {"MLFLOW_GENAI_EVAL_MAX_WORKERS": "10",
                                            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "20",
                                            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "20"}}


def workload(seed: int = 0) -> tuple[list[Any], list[str], list[str]]:
    """The models, inputs and references: seeded words, ~300-character inputs, ~100-character answers."""
    from llmft.contracts import ModelEvaluation

    rng = random.Random(seed)
    words = [("".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(2, 9)))) for _ in range(500)]

    def text(n: int) -> str:
        out = ""
        while len(out) < n:
            out += rng.choice(words) + " "
        return out[:n].strip()

    inputs, references = [text(300) for _ in range(ROWS)], [text(100) for _ in range(ROWS)]
    models = [ModelEvaluation(role=role, identity=f"{role}-model", outputs=[text(100) for _ in range(ROWS)],
                              row_scores=[{k: round(rng.random(), 4) for k in SCORES} for _ in range(ROWS)])
              for role in ROLES[:MODELS]]
    return models, inputs, references


# -- the variants ------------------------------------------------------------------------------------------

def legacy_tables(models: list[Any], inputs: list[str], references: list[str], one_run: bool = False,
                  workers: str | None = "2") -> list[str]:
    """`log_genai_evaluation` as it was before issue 25 (the GenAI harness), per model or all in one run."""
    import mlflow
    from mlflow.genai.scorers import scorer

    from llmft.evaluate.genai_tables import KEY_TAG, ROWS_TAG, _logged_before, table_key

    def task_scorer(key: str, scores: dict[tuple[str, int], dict[str, float]]) -> Any:
        @scorer(name=key)
        def task_metric(inputs: dict[str, Any]) -> float | None:
            value = scores[(inputs.get("model", ""), inputs["row"])].get(key)
            return None if value is None or not math.isfinite(value) else float(value)
        return task_metric

    groups = [("all", models)] if one_run else [(m.role, [m]) for m in models]
    runs = []
    for name, group in groups:
        data = [{"inputs": {"input": inputs[i], "row": i, **({"model": m.role} if one_run else {})},
                 "outputs": m.outputs[i], "expectations": {"expected_response": references[i]}}
                for m in group for i in range(ROWS)]
        scores = {((m.role if one_run else ""), i): m.row_scores[i] for m in group for i in range(ROWS)}
        key = table_key(data, [scores[k] for k in scores], "chat")
        if _logged_before(key):
            continue
        with mlflow.start_run(run_name=f"evaluation-{name}", nested=True) as run:
            mlflow.set_tags({"llmft.evaluation.role": name, "llmft.task": "chat"})
            database = mlflow.get_tracking_uri().split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql")
            if workers and database and "MLFLOW_GENAI_EVAL_MAX_WORKERS" not in os.environ:
                os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = workers  # DB_STORE_WORKERS, as it was
            mlflow.genai.evaluate(data=data, scorers=[task_scorer(k, scores) for k in SCORES])
            traces = mlflow.search_traces(run_id=run.info.run_id, return_type="list", include_spans=False,
                                          flush=True)
            logged = sum(1 for t in traces if any(a.name in SCORES for a in t.info.assessments or []))
            mlflow.set_tag(ROWS_TAG, f"{logged}/{len(data)}")
            if logged >= len(data):
                mlflow.set_tag(KEY_TAG, key)
        runs.append(run.info.run_id)
    return runs


def fluent_tables(models: list[Any], inputs: list[str], references: list[str]) -> list[str]:
    """A trace per row with `mlflow.start_span`, then `mlflow.log_assessment` per score and reference."""
    import mlflow
    from mlflow.entities import AssessmentSource, Expectation, Feedback
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_TYPE, MLFLOW_RUN_TYPE_GENAI_EVALUATE

    runs = []
    for m in models:
        with mlflow.start_run(run_name=f"evaluation-{m.role}", nested=True) as run:
            mlflow.set_tags({"llmft.evaluation.role": m.role, MLFLOW_RUN_TYPE: MLFLOW_RUN_TYPE_GENAI_EVALUATE})
            ids = []
            for i in range(ROWS):
                with mlflow.start_span(name="root_span", span_type="CHAIN") as span:
                    span.set_inputs({"input": inputs[i], "row": i})
                    span.set_outputs(m.outputs[i])
                ids.append((span.trace_id, span.span_id))
            mlflow.flush_trace_async_logging()
            meta = {"mlflow.assessment.sourceRunId": run.info.run_id}
            for i, (trace_id, span_id) in enumerate(ids):
                for k, v in m.row_scores[i].items():
                    mlflow.log_assessment(trace_id, Feedback(name=k, value=v, span_id=span_id, metadata=meta,
                                                             source=AssessmentSource("CODE", k)))
                mlflow.log_assessment(trace_id, Expectation(name="expected_response", value=references[i],
                                                            span_id=span_id, metadata=meta,
                                                            source=AssessmentSource("HUMAN", "llmft")))
            mlflow.log_metrics({f"{k}/mean": statistics.fmean(r[k] for r in m.row_scores) for k in SCORES})
        runs.append(run.info.run_id)
    return runs


def threaded_direct(models: list[Any], inputs: list[str], references: list[str]) -> list[str]:
    """`direct` with each table's `start_trace` calls on 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracing.client import TracingClient

    from llmft.evaluate import genai_tables

    def write(run_id: str, experiment_id: str, traces: list[tuple[Any, Any]]) -> list[str]:
        client = TracingClient()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda t: client.start_trace(t[0]), traces))
        client.log_spans(experiment_id, [span for _, span in traces])
        return []

    real, genai_tables._write_traces = genai_tables._write_traces, write
    try:
        return list(genai_tables.log_genai_evaluations(models, inputs, references, ROWS, "chat").values())
    finally:
        genai_tables._write_traces = real


def table_only(models: list[Any], inputs: list[str], references: list[str]) -> list[str]:
    import mlflow

    for m in models:
        mlflow.log_table({"input": inputs, "reference": references, "output": m.outputs,
                          **{k: [r[k] for r in m.row_scores] for k in SCORES}}, f"evaluation/genai_{m.role}.json")
    return []


def run_variant(variant: str, models: list[Any], inputs: list[str], references: list[str]) -> list[str]:
    from llmft.evaluate.genai_tables import log_genai_evaluations

    if variant == "harness":
        return legacy_tables(models, inputs, references)
    if variant == "harness-10-workers-pool-40":
        return legacy_tables(models, inputs, references, workers=None)
    if variant == "harness-one-run":
        return legacy_tables(models, inputs, references, one_run=True)
    if variant == "fluent-no-harness":
        return fluent_tables(models, inputs, references)
    if variant == "direct":
        tables = log_genai_evaluations(models, inputs, references, ROWS, "chat")
        return [tables[role] for role in ROLES[:MODELS] if role in tables]
    if variant == "direct-2-threads":
        return threaded_direct(models, inputs, references)
    return table_only(models, inputs, references)


# -- the check ---------------------------------------------------------------------------------------------

def rows_back(variant: str, runs: list[str], parent: str, inputs: list[str], references: list[str]) -> dict:
    """Rows that came back complete, read as the UI's evaluation tab reads a run's traces."""
    import mlflow

    if variant == "log-table-only":
        tables = [mlflow.load_table(f"evaluation/genai_{role}.json", run_ids=[parent]) for role in ROLES[:MODELS]]
        return {"rows_back": sum(len(t) for t in tables), "ui_view": "none (artifact tables only)"}
    complete, whole = 0, True
    for run_id in runs:
        run = mlflow.get_run(run_id)
        traces = mlflow.search_traces(locations=[run.info.experiment_id], return_type="list",
                                      filter_string=f"attributes.run_id = '{run_id}'")
        done = 0
        for t in traces:
            span = t.data.spans[0] if t.data.spans else None
            names = {a.name: a for a in t.info.assessments or []}
            row = span.inputs.get("row") if span and isinstance(span.inputs, dict) else None
            ok = (row is not None and span.inputs.get("input") == inputs[row] and isinstance(span.outputs, str)
                  and "expected_response" in names and names["expected_response"].value == references[row]
                  and all(k in names for k in SCORES))
            done += ok
        complete += done
        whole &= done == len(traces) and run.data.tags.get("mlflow.runType") == "genai_evaluate"
    per_model = len(runs) == MODELS
    view = ("per-model, comparable" if per_model else "one run, not per model") if whole and runs else "incomplete"
    return {"rows_back": complete, "ui_view": view}


def child(variant: str, uri: str) -> None:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    models, inputs, references = workload()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"bench-{variant}-{os.getpid()}")
    with mlflow.start_run() as parent:
        mlflow.log_param("warm", 1)  # the store's first write (schema, engine) is not what is timed
        started = time.perf_counter()
        runs = run_variant(variant, models, inputs, references)
        seconds = time.perf_counter() - started
    check = rows_back(variant, runs, parent.info.run_id, inputs, references)
    print("RESULT " + json.dumps({"seconds": round(seconds, 2), "rows_asked": MODELS * ROWS, **check}), flush=True)


# -- the parent --------------------------------------------------------------------------------------------

def measure(variant: str, uri: str | None, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(CHILD_ENV.get(variant, {}) if uri is None else {})
    if uri is None:
        folder = Path(tempfile.mkdtemp(dir=tmp))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        cwd = folder  # the sqlite store's default artifact root (./mlruns) lands in the temporary folder
    else:
        cwd = tmp
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--uri", uri], env=env, cwd=cwd,
                          text=True, capture_output=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT "):])


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--workers", "1",
                               "--default-artifact-root", str(tmp / "server-artifacts")], env=env, cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return server, uri
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("mlflow server did not start")


def summarize(store: str, variant: str, tries: list[dict]) -> dict:
    ok = [t for t in tries if "error" not in t]
    row = {"store": store, "variant": variant, "seconds": [t["seconds"] for t in ok],
           "median_seconds": round(statistics.median([t["seconds"] for t in ok]), 2) if ok else None,
           "rows_back": min((t["rows_back"] for t in ok), default=None), "rows_asked": MODELS * ROWS,
           "ui_view": ok[-1]["ui_view"] if ok else None}
    if len(ok) < len(tries):
        row["errors"] = [t["error"] for t in tries if "error" in t]
    return row


NOTES = """- Rows back: every row read back as the UI's evaluation tab reads a run's traces (`attributes.run_id =
  '<run>'`): the root span with the row's input and answer, `expected_response` and all 8 scores. On
  `mlflow-server` the read goes through the server's REST API, the one the UI calls.
- `harness-10-workers-pool-40` loses nothing with a pool of 40, but is no faster: the sqlite store writes one
  transaction at a time, and each trace is still 11 of them (trace, spans, 9 assessments) plus a read.
- `harness-one-run` saves the per-run overhead only, and gives up the per-model runs the UI compares.
- `fluent-no-harness` (start_span, log_assessment) writes the same transactions as the harness.
- `direct` (implemented in `llmft/evaluate/genai_tables.py`): one `start_trace` per row carrying its reference
  and scores as assessments, one `log_spans` per table, one read-back per table. `direct-2-threads` is within
  the noise of it (an A/B by hand, in one process: 2.86/3.00, 2.79/2.92, 2.92/2.82 s), so the writes stay sequential:
  no two writers on the sqlite file.
- `log-table-only` is fastest but has no evaluation view (no per-row scores, no compare-to-run)."""


def report(results: list[dict], out: Path, repeats: int) -> None:
    """Print the table; write the JSON and a short Markdown beside it."""
    import mlflow

    lines = ["| store | variant | median s (each) | rows back | ratio to harness | UI evaluation view |",
             "|---|---|---|---|---|---|"]
    print(f"\n{'store':14} {'variant':28} {'median s':>9} {'rows':>7} {'ratio':>7}  ui view")
    for r in results:
        print(f"{r['store']:14} {r['variant']:28} {r['median_seconds'] or float('nan'):9.2f} "
              f"{r['rows_back']}/{r['rows_asked']:<3} {r['ratio_to_harness'] or float('nan'):7.3f}  {r['ui_view']}")
        lines.append(f"| {r['store']} | {r['variant']} | {r['median_seconds']} ({', '.join(map(str, r['seconds']))}) "
                     f"| {r['rows_back']}/{r['rows_asked']} | {r['ratio_to_harness']} | {r['ui_view']} |")
    what = f"{MODELS} models x {ROWS} rows (input ~300 chars, answer ~100, {len(SCORES)} per-row scores)"
    machine = (f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
               f"MLflow {mlflow.__version__}; shared with other jobs")
    out.write_text(json.dumps({"what": what, "machine": machine, "repeats": repeats, "results": results},
                              indent=1) + "\n")
    md = [f"# GenAI evaluation tables: logging time (CPU, {os.cpu_count()} cores)", "",
          f"`python benchmarks/genai_tables.py --repeats {repeats} --server` (issue 25): {what}, each variant in "
          f"its own process on a fresh store; {machine}. Seconds: the logging call only.", "", *lines, "", NOTES]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"written: {out} and {out.with_suffix('.md')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--server", action="store_true", help="also on a local mlflow server (sqlite behind it)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-genai-tables-cpu-2core.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.uri)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="llmft-genai-bench-") as name:
        tmp = Path(name)
        stores: list[tuple[str, str | None, list[str]]] = [("sqlite", None, args.variants)]
        server = None
        if args.server:
            server, uri = start_server(tmp)
            stores.append(("mlflow-server", uri, [v for v in SERVER_VARIANTS if v in args.variants]))
        try:
            for store, uri, variants in stores:
                tries: dict[str, list[dict]] = {v: [] for v in variants}
                for _ in range(args.repeats):  # interleaved: a load change on the machine hits every variant
                    for variant in variants:
                        tries[variant].append(measure(variant, uri, tmp))
                        print(store, variant, json.dumps(tries[variant][-1]), flush=True)
                rows = [summarize(store, v, tries[v]) for v in variants]
                base = next((r["median_seconds"] for r in rows if r["variant"] == "harness"), None)
                for r in rows:
                    r["ratio_to_harness"] = (round(r["median_seconds"] / base, 3)
                                             if base and r["median_seconds"] else None)
                results += rows
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    report(results, Path(args.out), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
