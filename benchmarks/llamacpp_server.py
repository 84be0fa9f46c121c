"""llama.cpp's own server (upstream llama-server, embedded in the `xllamacpp` wheel) on a GGUF, for the
serving benchmark (`serve_load.py --compare-mlflow --servers llamacpp-f16 llamacpp-q8_0`):

    python benchmarks/llamacpp_server.py --model model.q8_0.gguf --port 8081 --parallel 32 \
        --ctx-size 12288 --threads 2

Runs until SIGTERM or SIGINT. OpenAI-style `/v1/chat/completions`, `/health`, `/apply-template` and
`/tokenize`, continuous batching over `--parallel` slots of `--ctx-size / --parallel` tokens each. The
chat template is the GGUF's own (`tokenizer.chat_template`, which llmft's export writes from the
trained tokenizer), rendered by llama.cpp's Jinja engine; `--chat-template-file` overrides it.

`prepare` writes the GGUFs it serves from a registered version through llmft's own exporter and sizes
the context; `check_prompts` proves a running server gets the same prompt tokens as ours.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NOT_INSTALLED = "xllamacpp (a prebuilt llama.cpp server) is not installed: pip install 'llmft[bench]'"


def export_ggufs(model_uri: str, quants: list[str], out_dir: Path) -> tuple[dict[str, Path], Any]:
    """One GGUF per quant ("f16", "q8_0") of the registered version `model_uri` names, written by
    llmft's exporter (`write_gguf`: weights, tokenizer and its chat template), from the model loaded
    the way `export_version` loads it (full precision); also the tokenizer, for the prompt check."""
    from llmft.export.gguf_writer import write_gguf
    from llmft.registry.versions import load_registered

    parts = load_registered(model_uri)
    model, tokenizer = parts["model"].float(), parts["tokenizer"]
    paths = {quant: write_gguf(model, tokenizer, out_dir / f"served.{quant}.gguf", quant, name="served",
                               description=f"{model_uri}, exported by llmft for serve_load.py")
             for quant in quants}
    return paths, tokenizer


def server_threads() -> int:
    """The threads our server decodes on: OMP_NUM_THREADS (serve_load's --torch-threads) when set, else
    torch's default (what our server's torch picks on this machine)."""
    import torch

    return int(os.environ.get("OMP_NUM_THREADS") or 0) or torch.get_num_threads()


def prepare(model_uri: str, quants: list[str], out_dir: Path, prompts: list[list[dict[str, str]]],
            max_tokens: int, parallel: int) -> dict[str, Any]:
    """Export the GGUFs and size llama.cpp's context: `parallel` slots (our largest batch), each with
    room for the longest of `prompts` (rendered and tokenized as our server does) plus `max_tokens`."""
    from llmft.chat_format import render_generation_prompt

    if importlib.util.find_spec("xllamacpp") is None:  # before the export, not after
        raise SystemExit(NOT_INSTALLED)
    started = time.perf_counter()
    paths, tokenizer = export_ggufs(model_uri, quants, out_dir)
    longest = max(len(tokenizer(render_generation_prompt(tokenizer, m), add_special_tokens=False)["input_ids"])
                  for m in prompts)
    return {"xllamacpp": importlib.metadata.version("xllamacpp"), "gguf": {q: str(p) for q, p in paths.items()},
            "gguf_mb": {q: round(p.stat().st_size / 1e6, 1) for q, p in paths.items()},
            "export_s": round(time.perf_counter() - started, 1), "threads": server_threads(),
            "parallel": parallel, "ctx_size": parallel * (longest + max_tokens + 16), "longest_prompt": longest,
            "tokenizer": tokenizer}


def check_prompts(base: str, tokenizer: Any, prompts: list[list[dict[str, str]]]) -> int:
    """Refuse to measure llama.cpp unless every prompt reaches the model as the same tokens as in our
    server: the GGUF's template (llama.cpp's Jinja engine, `/apply-template`) against our rendering
    (the tokenizer's template through chat_format, as serve/parsing.py renders), then llama.cpp's
    tokens (as its chat completions tokenize: special tokens added and parsed) against the tokenizer's
    (as our server tokenizes). Returns how many distinct conversations were checked."""
    from llmft.chat_format import render_generation_prompt
    from llmft.serve.deploy import post_json

    distinct = list({json.dumps(m): m for m in prompts}.values())
    for messages in distinct:
        ours = render_generation_prompt(tokenizer, messages)
        status, body = post_json(f"{base}/apply-template", {"messages": messages}, timeout=60)
        if status != 200 or body.get("prompt") != ours:
            raise SystemExit(f"llama.cpp renders {messages[-1]['content']!r} differently: {str(body)[:300]!r} "
                             f"against ours {ours!r}")
        status, body = post_json(f"{base}/tokenize", {"content": ours, "add_special": True, "parse_special": True},
                                 timeout=60)
        if status != 200 or body.get("tokens") != tokenizer(ours, add_special_tokens=False)["input_ids"]:
            raise SystemExit(f"llama.cpp tokenizes {messages[-1]['content']!r} differently: {str(body)[:300]}")
    return len(distinct)


def serve(model: str, port: int, parallel: int, ctx_size: int, threads: int,
          chat_template: str | None = None, host: str = "127.0.0.1", starts_only: bool = False) -> Any:
    """Start llama-server in background threads of this process; returns the server (keep it referenced:
    dropping it stops the server). `starts_only`: see --starts-only."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = model
    params.n_ctx = ctx_size  # split evenly over the slots (kv_unified is off): each gets ctx_size / parallel
    params.n_parallel = parallel
    params.cont_batching = True
    # decoding and prompt processing on the same thread count as our server's torch threads
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.use_jinja = True  # the GGUF's Jinja template as written, not llama.cpp's built-in guess of it
    if chat_template:
        params.chat_template = chat_template
    if starts_only:
        params.cache_ram_mib = 0  # no prompts kept in RAM beyond the slots
        params.slot_prompt_similarity = 0.0  # slots by least recent use, not by the most similar cached prompt
    params.hostnames = [host]
    params.port = port
    return xlc.Server(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--parallel", type=int, default=1, help="slots decoded together (continuous batching)")
    parser.add_argument("--ctx-size", type=int, default=4096, help="KV cache tokens over all slots")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chat-template-file", help="a Jinja chat template instead of the GGUF's own")
    # serve_load.py repeats prompts across its load levels, which traffic of distinct requests does not;
    # llama.cpp's RAM prompt cache would answer those repeats' prefill from memory, our server would not
    parser.add_argument("--starts-only", action="store_true",
                        help="reuse a slot's cached prompt only for the start it shares with the next one (the "
                             "common system turn, as our server's deploy.share_prefixes): no RAM prompt cache, "
                             "no slot choice by prompt similarity")
    args = parser.parse_args()
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        raise SystemExit(NOT_INSTALLED) from None
    template = Path(args.chat_template_file).read_text(encoding="utf-8") if args.chat_template_file else None

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve(args.model, args.port, args.parallel, args.ctx_size, args.threads, template, args.host,
                   args.starts_only)
    print(f"llama.cpp server listening on {server.listening_address}", flush=True)
    while not stop.wait(1.0):  # the server runs in its own threads; the main thread only waits for a signal
        pass
    del server  # its destructor stops the HTTP loop and frees the model


if __name__ == "__main__":
    main()
