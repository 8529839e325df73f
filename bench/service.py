"""The service against the same work done directly, side by side in one run (issue 17's targets):

  job overhead   a 10-step SFT LoRA job through `tunesmith serve` (upload, create, poll until succeeded)
                 vs the same run from the CLI (`tunesmith sft --config <the job's config.yaml>`), wall
                 time including process start and model load on both sides; `--rounds` pairs, each side's
                 fastest (the first round pays for cold file caches). Target: <= 10% or <= 15 s more.
  chat latency   one greedy chat completion of the fine-tuned `ft:` model through the server (warm) vs
                 `tunesmith generate`'s own code path with the same adapter in one process (warm), same
                 prompt, same tokens. Median of --repeats. Target: <= 1.2x.
  concurrency    8 different prompts to the `ft:` model, sent at once from 8 threads vs one after another.
                 Target: the concurrent batch >= 2.5x faster in total.

    PYTHONPATH=src python bench/service.py                       # the embedded model, ~6 min on 2 CPU cores
    PYTHONPATH=src python bench/service.py --model tiny-random-llama --quick

Each side runs with the same torch thread count (this machine's default). Results: bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import ROOT, child_env, write_result

KEY = "sk-bench"
PROMPTS = [
    "My order arrived damaged. What should I do?",
    "How do I reset my password?",
    "Can I change the delivery address after ordering?",
    "The app crashes when I open settings.",
    "Do you ship to Canada?",
    "I was charged twice for one order.",
    "How long does a refund take?",
    "Where can I download my invoice?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(child_env(), TUNESMITH_API_KEYS=f"bench:{KEY}", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "tunesmith", "serve", "--port", str(port), "--home", str(home), "--workers", "1"]
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([*argv, "--model", model], env=env, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"tunesmith serve exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit("tunesmith serve did not answer within 120 s")


def service_job(client, data: Path, model: str, steps: int) -> tuple[object, float]:
    """Upload, create, poll until the job ends: the job and the wall seconds from upload to succeeded."""
    t = time.perf_counter()
    with open(data, "rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
        extra_body={"tunesmith": {"max_steps": steps, "save_every": steps}},
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.25)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        sys.exit(f"job {job.id} {job.status}: {job.error}")
    return job, time.perf_counter() - t


def cli_run(config: Path, out: Path) -> float:
    """The job's own config.yaml through `tunesmith sft`, in a fresh process: wall seconds."""
    t = time.perf_counter()
    argv = [sys.executable, "-m", "tunesmith", "sft", "--config", str(config), "--out", str(out)]
    p = subprocess.run(argv, env=child_env(), capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"tunesmith sft failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


GENERATE_CHILD = """
import json, statistics, sys, time
from tunesmith.generation import generate_chat
from tunesmith.models.inference import load_for_inference
base, adapter, prompt, max_new, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
model, tokenizer = load_for_inference(base, [adapter], "auto")
times, reply = [], None
for _ in range(repeats + 1):  # the first is warm-up
    t = time.perf_counter()
    reply = generate_chat(model, tokenizer, [prompt], max_new_tokens=max_new)[0]
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times[1:]), "reply": reply}))
"""


def generate_latency(base: str, adapter: Path, prompt: str, max_new: int, repeats: int) -> dict:
    import json

    argv = [sys.executable, "-c", GENERATE_CHILD, base, str(adapter), prompt, str(max_new), str(repeats)]
    p = subprocess.run(argv, env=child_env(), capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"generate failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def chat(client, model: str, prompt: str, max_new: int):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_new, temperature=0
    )


def chat_latency(client, model: str, prompt: str, max_new: int, repeats: int) -> tuple[float, str, int]:
    chat(client, model, prompt, max_new)  # warm-up: loads the adapter
    times, answer = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        answer = chat(client, model, prompt, max_new)
        times.append(time.perf_counter() - t)
    return statistics.median(times), answer.choices[0].message.content, answer.usage.completion_tokens


def concurrent_vs_sequential(client, model: str, max_new: int) -> dict:
    t = time.perf_counter()
    sequential = [chat(client, model, p, max_new) for p in PROMPTS]
    seq_s = time.perf_counter() - t
    answers: list = [None] * len(PROMPTS)

    def ask(i: int) -> None:
        answers[i] = chat(client, model, PROMPTS[i], max_new)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    conc_s = time.perf_counter() - t
    same = sum(a.choices[0].message.content == s.choices[0].message.content for a, s in zip(answers, sequential))
    return {
        "sequential_s": round(seq_s, 2),
        "concurrent_s": round(conc_s, 2),
        "speedup": round(seq_s / conc_s, 2),
        "tokens": sum(a.usage.completion_tokens for a in answers),
        "same_answers": f"{same}/{len(PROMPTS)}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(ROOT / "src/tunesmith/demo/data/support_train.jsonl"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="service job + CLI run pairs; each side's fastest counts")
    p.add_argument("--results-dir", default=str(ROOT / "bench/results"))
    p.add_argument("--name", default=None)
    p.add_argument("--quick", action="store_true", help="3 steps, 2 repeats, 16 new tokens (a smoke run)")
    a = p.parse_args()
    if a.quick:
        a.steps, a.repeats, a.max_new_tokens, a.rounds = 3, 2, 16, 1
    import openai

    work = Path(tempfile.mkdtemp(prefix="tunesmith-bench-service-"))
    home = work / "home"
    home.mkdir()
    server, url = start_server(home, a.model)
    try:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
        service_times, cli_times = [], []
        for r in range(a.rounds):  # the first round also pays for cold caches: each side's best counts
            job, seconds = service_job(client, Path(a.data), a.model, a.steps)
            service_times.append(seconds)
            run_dir = home / "runs" / job.id
            cli_times.append(cli_run(run_dir / "config.yaml", work / f"cli-run-{r}"))
        service_s, cli_s = min(service_times), min(cli_times)
        overhead = {
            "service_s": round(service_s, 2),
            "cli_s": round(cli_s, 2),
            "extra_s": round(service_s - cli_s, 2),
            "ratio": round(service_s / cli_s, 3),
            "rounds": {"service_s": [round(t, 2) for t in service_times], "cli_s": [round(t, 2) for t in cli_times]},
        }
        print(f"job overhead ({a.steps} steps): service {service_s:.1f} s, CLI {cli_s:.1f} s", flush=True)
        prompt = PROMPTS[0]
        server_s, server_reply, tokens = chat_latency(client, job.fine_tuned_model, prompt, a.max_new_tokens, a.repeats)
        base = str(run_dir / "adapter")
        local = generate_latency(a.model, Path(base), prompt, a.max_new_tokens, a.repeats)
        latency = {
            "server_s": round(server_s, 3),
            "generate_s": round(local["seconds"], 3),
            "ratio": round(server_s / local["seconds"], 3),
            "completion_tokens": tokens,
            "same_reply": server_reply == local["reply"],
        }
        print(f"chat latency: server {server_s:.2f} s, generate {local['seconds']:.2f} s", flush=True)
        concurrency = concurrent_vs_sequential(client, job.fine_tuned_model, a.max_new_tokens)
        print(f"8 requests: {concurrency}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    result = {
        "bench": "service",
        "model": a.model,
        "steps": a.steps,
        "max_new_tokens": a.max_new_tokens,
        "repeats": a.repeats,
        "date": datetime.date.today().isoformat(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "job_overhead": overhead,
        "chat_latency": latency,
        "concurrency": concurrency,
        "targets": {
            "job_overhead": overhead["ratio"] <= 1.10 or overhead["extra_s"] <= 15,
            "chat_latency": latency["ratio"] <= 1.2,
            "concurrency": concurrency["speedup"] >= 2.5,
        },
    }
    print(result["targets"])
    write_result(result, a.results_dir, f"-{a.name}" if a.name else "")


if __name__ == "__main__":
    main()
