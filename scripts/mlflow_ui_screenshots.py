"""Screenshots of the MLflow UI for a finished finetune run, taken with headless Chromium.

Given a project folder (`LLMFT_HOME`, default `.llmft`) whose store holds a finished finetune run,
this starts `mlflow server` on a free localhost port over that store, finds the run, its nested
GenAI evaluation runs, its checkpoint LoggedModels, its registered version and prompt version and
any request traces of the served model through the MLflow client, opens each page in headless
Chromium (driven over the DevTools protocol on a pipe: no extra Python packages), waits until the
page shows the data it should (not a spinner or an empty state), saves a PNG, and stops the server.

    python scripts/mlflow_ui_screenshots.py --home /tmp/uihome            # -> docs/mlflow-ui/*.png
    python scripts/mlflow_ui_screenshots.py --home .llmft --run-id <id> --out /tmp/shots

Exit status 1 when a page never showed what it should (its PNG is still written, for a look) or
when the run lacks something the default run produces (named on stderr). Needs Chromium
(`apt-get install chromium`); only localhost is contacted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
MAX_PNG_BYTES = 400_000
# Popovers that would cover the data: the assistant side panel, "Got it" feature tours.
DISMISS_JS = """(() => {
  const closed = [];
  for (const el of document.querySelectorAll('[data-component-id="mlflow.assistant.chat_panel.close"]')) {
    el.click(); closed.push('assistant');
  }
  for (const el of document.querySelectorAll('button')) {
    if (el.innerText.trim() === 'Got it') { el.click(); closed.push('tour'); }
  }
  return closed.join(',');
})()"""

FOCUS_JS = """((text) => {
  const hit = [...document.querySelectorAll('body *')].find(
    (el) => el.children.length === 0 && el.textContent.trim() === text);
  if (!hit) return false;
  const scrollers = [];
  for (let el = hit.parentElement; el; el = el.parentElement) {
    if (el.scrollHeight > el.clientHeight && /(auto|scroll)/.test(getComputedStyle(el).overflowY)) scrollers.push(el);
  }
  hit.scrollIntoView({block: 'center'});
  scrollers.slice(1).forEach((el) => { el.scrollTop = 0; });  // only the innermost list scrolls
  return true;
})(%s)"""


@dataclass
class Page:
    file: str
    path: str  # the part of the URL after '#'
    what: str
    expect: list[str] = field(default_factory=list)  # texts the page must show before the screenshot
    height: int = 1100
    focus: str = ""  # scroll the element showing exactly this text into view (e.g. a tag in a scrolled table)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: the
    browser reads commands on fd 3 and writes answers on fd 4, each message ending in a NUL byte)."""

    def __init__(self, executable: str, width: int) -> None:
        self.width = width
        self.profile = tempfile.mkdtemp(prefix="llmft-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe ends on fds 3 and 4
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},1100",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        threading.Thread(target=self._read, name="cdp-reader", daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                waiter = self._waiting.pop(message.get("id", -1), None)
                if waiter is not None:
                    waiter.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float = 60.0) -> dict[str, Any]:
        with self._lock:
            self._next += 1
            ident = self._next
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        self._waiting[ident] = answer
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
            reply = answer.get(timeout=timeout_s)
        except (OSError, queue.Empty) as exc:
            raise RuntimeError(f"Chromium did not answer {method} ({type(exc).__name__})") from exc
        if "error" in reply:
            raise RuntimeError(f"Chromium refused {method}: {reply['error']}")
        return reply.get("result", {})

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result.get("result", {}).get("value")

    def screenshot(self, url: str, page: Page, out: Path, timeout_s: float, settle_s: float) -> list[str]:
        """Saves the page as a PNG once it shows every expected text (or at the timeout); returns
        the expected texts it never showed."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)
            self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": page.height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session)
            self.send("Page.navigate", {"url": url}, session)
            deadline = time.monotonic() + timeout_s
            missing = list(page.expect)
            while True:
                text = self.evaluate(session, "document.body ? document.body.innerText : ''") or ""
                missing = [t for t in page.expect if t not in text]
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            time.sleep(settle_s)  # let charts and late requests finish drawing
            if self.evaluate(session, DISMISS_JS):
                time.sleep(1.0)
            if page.focus and self.evaluate(session, FOCUS_JS % json.dumps(page.focus)):
                time.sleep(1.0)
            data = self.send("Page.captureScreenshot", {"format": "png"}, session, timeout_s=120)["data"]
            out.write_bytes(base64.b64decode(data))
            return missing
        finally:
            with contextlib.suppress(RuntimeError):
                self.send("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else BROWSERS):
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit(f"error: no Chromium found ({name or ', '.join(BROWSERS)}); install it: apt-get install chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, artifact_root: str, timeout_s: float, log_path: Path) -> Iterator[str]:
    """`mlflow server` over the project's store on a free localhost port, stopped on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
             "--default-artifact-root", artifact_root, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: mlflow server exited with {proc.returncode}; its log: {log_path}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"error: mlflow server not up after {timeout_s:.0f} s; its log: {log_path}")
            time.sleep(1.0)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def find_pages(tracking_uri: str, run_id: str | None) -> tuple[list[Page], list[str]]:
    """The pages to take for the run (the newest finetune run with evaluation runs when none is
    given) and what the default run should have but this one lacks."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if run_id is None:
        evaluations = client.search_runs(experiments, "tags.`llmft.evaluation.role` != ''",
                                         order_by=["attributes.start_time DESC"], max_results=50)
        parents = [r.data.tags.get("mlflow.parentRunId") for r in evaluations]
        run_id = next((p for p in parents if p), None)
        if run_id is None:
            raise SystemExit(f"error: no finetune run with evaluation runs in {tracking_uri}")
    run = client.get_run(run_id)
    exp = run.info.experiment_id
    name = run.info.run_name
    lacking: list[str] = []
    pages = [Page("01-finetune-run.png", f"/experiments/{exp}/runs/{run_id}",
                  f"the finetune run `{name}`: description, child evaluation runs, registered model, tags",
                  [name, "evaluation-finetuned", "evaluation-base"])]

    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'", max_results=100)
    roles = {r.data.tags["llmft.evaluation.role"]: r for r in children if "llmft.evaluation.role" in r.data.tags}
    for role in ("base", "finetuned"):
        if role not in roles:
            lacking.append(f"no nested evaluation run for {role} (tag llmft.evaluation.role={role})")
    scorers = sorted({k.rsplit("/", 1)[0] for r in roles.values() for k in r.data.metrics if k.endswith("/mean")})
    if "finetuned" in roles and "base" in roles:
        tuned, base = roles["finetuned"].info.run_id, roles["base"].info.run_id
        pages.append(Page("02-evaluation-finetuned-vs-base.png",
                          f"/experiments/{exp}/runs/{tuned}/evaluations?compareToRunUuid={base}",
                          "per-row GenAI evaluation table: fine-tuned (evaluation-finetuned) compared row by row "
                          "with the base model (evaluation-base): input, answer, expected output, per-row scores",
                          ["evaluation-finetuned", "evaluation-base", *scorers[:3]]))
    for number, role in ((3, "base"), (4, "finetuned")):
        if role in roles:
            pages.append(Page(f"0{number}-evaluation-{role}.png",
                              f"/experiments/{exp}/runs/{roles[role].info.run_id}/evaluations",
                              f"per-row GenAI evaluation table of the {role} model alone (evaluation-{role})",
                              [f"evaluation-{role}", *scorers[:3]]))

    checkpoints = [m for m in client.search_logged_models([exp], max_results=500)
                   if m.source_run_id == run_id and m.name.startswith("checkpoint-")]
    if checkpoints:
        pages.append(Page("05-logged-models.png", f"/experiments/{exp}/models",
                          "the experiment's LoggedModels: this run's checkpoints (checkpoint-<step>) and the "
                          "registered `model`", sorted({m.name for m in checkpoints})))
        kept = next((m for m in checkpoints if m.tags.get("llmft.kept") == "true"), checkpoints[0])
        pages.append(Page("06-checkpoint-model.png", f"/experiments/{exp}/models/{kept.model_id}",
                          f"the kept checkpoint LoggedModel ({kept.name}): its train and validation loss at that "
                          "step, source run (MLflow 3.17 shows no LoggedModel tags here: llmft.kept is API-only)",
                          [kept.name, "train_loss"]))
    else:
        lacking.append(f"no checkpoint LoggedModels with source_run_id={run_id}")

    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if versions:
        version = versions[0]
        pages.append(Page("07-model-version.png", f"/models/{version.name}/versions/{version.version}",
                          f"the registered version {version.name} v{version.version}: model card, tags "
                          "(prompt_uri, metrics, lineage), aliases", [f"Version {version.version}", "prompt_uri"],
                          height=1900, focus="prompt_uri"))
        prompt_uri = version.tags.get("prompt_uri", "")
        if prompt_uri.startswith("prompts:/"):
            prompt_name, _, prompt_version = prompt_uri.removeprefix("prompts:/").partition("/")
            query = f"?promptVersion={prompt_version}" if prompt_version.isdigit() else ""
            pages.append(Page("08-prompt-version.png", f"/prompts/{urllib.parse.quote(prompt_name)}{query}",
                              f"the Prompt Registry entry {prompt_uri}: instruction and chat-template metadata",
                              [prompt_name, f"Version {prompt_version}" if prompt_version.isdigit() else ""]))
        else:
            lacking.append(f"version {version.name} v{version.version} has no prompt_uri tag")
    else:
        lacking.append(f"no registered model version from run {run_id}")

    traces = [t for t in client.search_traces(locations=[exp], max_results=200, order_by=["timestamp_ms DESC"])
              if "llmft.model_uri" in t.info.tags]
    if traces:
        pages.append(Page("09-request-traces.png", f"/experiments/{exp}/traces",
                          f"the experiment's traces, newest first: {len(traces)} chat request(s) traced by the "
                          "served model (deploy.tracing), below them the evaluation rows' traces", ["Traces"]))
        first = traces[0].info.trace_id
        pages.append(Page("10-request-trace.png", f"/experiments/{exp}/traces?selectedEvaluationId={first}",
                          "one served chat request's trace: prompt, completion, token usage, latency, model "
                          "version", [first.removeprefix("tr-")[:8], "chat", "tokens"]))
    else:
        lacking.append(f"no request traces (tag llmft.model_uri) in experiment {exp}: deploy with "
                       "deploy.tracing=true and send a chat request first")
    for page in pages:
        page.expect = [t for t in page.expect if t]
    return pages, lacking


def shrink(path: Path, limit: int = MAX_PNG_BYTES) -> None:
    """Keeps a PNG under `limit` bytes: a 256-colour palette first (UI screenshots lose nothing
    visible), then smaller sizes."""
    if path.stat().st_size <= limit:
        return
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        sized = image if scale == 1.0 else image.resize((int(image.width * scale), int(image.height * scale)),
                                                        Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        sized.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
        if buffer.tell() <= limit or scale < 0.4:
            path.write_bytes(buffer.getvalue())
            return
        scale *= 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LLMFT_HOME", ".llmft")),
                        help="project folder with mlflow.db and mlartifacts/ (default: $LLMFT_HOME or .llmft)")
    parser.add_argument("--run-id", help="the finetune run (default: the newest one with evaluation runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "mlflow-ui")
    parser.add_argument("--browser", help=f"Chromium executable (default: the first of {', '.join(BROWSERS)} on PATH)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--only", nargs="*", default=[], help="take only the pages whose file starts so (e.g. 07 10)")
    parser.add_argument("--page-timeout", type=float, default=120.0, help="seconds a page may take to show its data")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the data shows")
    parser.add_argument("--server-timeout", type=float, default=180.0, help="seconds mlflow server may take to start")
    args = parser.parse_args(argv)

    browser_path = find_browser(args.browser)
    home = args.home.resolve()
    store = home / "mlflow.db"
    if not store.is_file():
        raise SystemExit(f"error: no MLflow store at {store}; run a finetune with LLMFT_HOME={home} first")
    tracking_uri = f"sqlite:///{store}"
    pages, lacking = find_pages(tracking_uri, args.run_id)
    if args.only:
        pages = [p for p in pages if p.file.startswith(tuple(args.only))]
    args.out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llmft-ui-") as scratch:
        log_path = Path(scratch) / "mlflow-server.log"
        with mlflow_server(tracking_uri, (home / "mlartifacts").as_uri(), args.server_timeout, log_path) as base:
            print(f"mlflow server on {base} ({len(pages)} pages)")
            browser = Browser(browser_path, args.width)
            try:
                for page in pages:
                    started = time.monotonic()
                    out = args.out / page.file
                    missing = browser.screenshot(f"{base}/#{page.path}", page, out, args.page_timeout, args.settle)
                    shrink(out)
                    status = "ok" if not missing else f"MISSING {missing}"
                    print(f"{page.file}: {status} ({time.monotonic() - started:.0f} s, {out.stat().st_size // 1000} KB)"
                          f"  #{page.path}")
                    if missing:
                        failed.append(f"{page.file} never showed {missing}")
            finally:
                browser.close()
    for line in lacking:
        print(f"lacking: {line}", file=sys.stderr)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed or lacking else 0


if __name__ == "__main__":
    sys.exit(main())
