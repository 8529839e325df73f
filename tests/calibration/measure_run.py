"""Run a short real `tunesmith sft` in this process and print what it measured as one JSON line.

    python tests/calibration/measure_run.py sft --model smollm2-135m-instruct --method lora --data FILE \
        --max-steps 3 --batch-size 8 --max-length 256 --precision fp32 --out DIR --overwrite --no-progress

The arguments are those of `tunesmith sft`; the command runs through `tunesmith.cli.main`. Three names
the recipe calls are wrapped (the recipe itself is untouched):

  build_trainable_model  the RSS just before the model is loaded is the baseline (python, torch,
                         transformers, peft, bitsandbytes, the tokenizer and the data already in memory);
                         after loading, freed memory is handed back to the OS (malloc_trim) and the
                         kernel's peak-RSS counter (VmHWM) is reset, so loading transients (a state dict
                         and the model both alive, NF4 quantisation) are not what the peak measures.
  collate                the shape of every micro-batch: rows, width, real tokens (the examples'), tokens
                         computed (fewer when examples share a prefix), trained tokens.
  optimizer_step         the time each step ends and the peak RSS so far; after the last step the run
                         stops (the final checkpoint and save are not training and are not measured).

Peak memory attributable to training = VmHWM after the last step - the baseline RSS - the resident pages of
the memory-mapped checkpoint that no tensor uses any more (QLoRA's fp32 linears, read once to quantise them;
`unused_checkpoint_bytes`, 0 for lora and full). A thread also samples
RssAnon (anonymous memory only: tensors, not the shared-library pages that a first backward pulls in)
every 5 ms as a cross-check; both are printed.
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import sys
import threading
import time

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def status() -> dict[str, int]:
    """Bytes of the memory fields of /proc/self/status."""
    text = open("/proc/self/status").read()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M) if k in FIELDS}


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def unused_checkpoint_pages(model) -> int:
    """Resident bytes of the memory-mapped *.safetensors checkpoint that no tensor of `model` lies in.

    transformers maps the checkpoint and fp32 weights stay views of it. QLoRA reads the fp32 linears once
    to quantise them; their pages stay resident (clean, file-backed: the kernel drops them under memory
    pressure, nothing reads them again) while the mapping lives on for the embedding.
    """
    maps, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
            if head:
                current = None
                if head.group(3).endswith(".safetensors"):
                    current = [int(head.group(1), 16), int(head.group(2), 16), 0]
                    maps.append(current)
            elif current is not None and line.startswith("Rss:"):
                current[2] = int(line.split()[1]) * 1024
    in_use: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if any(lo <= storage.data_ptr() < hi for lo, hi, _ in maps):
            in_use[storage.data_ptr()] = storage.nbytes()
    return max(0, sum(rss for *_, rss in maps) - sum(in_use.values()))


class Sampler(threading.Thread):
    """The highest RssAnon seen since `reset`, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0, True

    def reset(self) -> None:
        self.peak = status()["RssAnon"]

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, status()["RssAnon"])
            time.sleep(self.interval)


class Stop(Exception):
    """Raised after the last optimizer step: the measured part of the run is over."""


def main(argv: list[str]) -> int:
    max_steps = int(argv[argv.index("--max-steps") + 1])
    # pay every import before the baseline: loading the model must not be charged for code
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    from tunesmith.cli import main as tunesmith_main
    from tunesmith.recipes import sft
    from tunesmith.train import run as run_scaffold  # builds every recipe's model

    out: dict = {
        "threads": torch.get_num_threads(),
        "batches": [],
        "step_s": [],
        "hwm_after_step": [],
        "anon_peak_after_step": [],
    }
    step_start = [0.0]
    trained: list = []  # the model, once built
    sampler = Sampler()
    build, collate, optimizer_step = run_scaffold.build_trainable_model, sft.collate, sft.optimizer_step

    def measured_build(*args, **kwargs):
        release_freed()
        out["baseline"] = status()
        result = build(*args, **kwargs)
        trained.append(result[0])
        release_freed()
        out["loaded"] = status()
        out["hwm_reset"] = reset_peak()
        sampler.reset()
        sampler.start()
        step_start[0] = time.perf_counter()
        return result

    def measured_collate(examples, *args, **kwargs):
        batch = collate(examples, *args, **kwargs)
        rows, width = batch.input_ids.shape
        out["batches"].append(
            {
                "step": len(out["step_s"]) + 1,
                "rows": rows,
                "width": width,
                "examples": len(examples),
                "tokens": batch.num_tokens,
                "targets": batch.num_targets,
                # through the model: one row has no padding, and holds a shared prefix once
                "computed": width if rows == 1 else batch.num_tokens,
            }
        )
        return batch

    def measured_step(*args, **kwargs):
        norm = optimizer_step(*args, **kwargs)
        out["step_s"].append(time.perf_counter() - step_start[0])  # step 1 includes the warm-up
        out["hwm_after_step"].append(status()["VmHWM"])
        out["anon_peak_after_step"].append(sampler.peak)
        out["end"] = status()
        out["unused_checkpoint_bytes"] = unused_checkpoint_pages(trained[0])
        if len(out["step_s"]) == max_steps:
            raise Stop
        step_start[0] = time.perf_counter()
        return norm

    run_scaffold.build_trainable_model = measured_build
    sft.collate, sft.optimizer_step = measured_collate, measured_step
    try:
        code = tunesmith_main(argv)
        raise SystemExit(f"the run ended (exit {code}) before step {max_steps}")
    except Stop:
        pass
    sampler.running = False
    out["peak_rss_bytes"] = max(out["hwm_after_step"]) - out["baseline"]["VmRSS"]
    out["peak_bytes"] = out["peak_rss_bytes"] - out["unused_checkpoint_bytes"]
    out["peak_anon_bytes"] = max(out["anon_peak_after_step"]) - out["baseline"]["RssAnon"]
    out["loaded_bytes"] = out["loaded"]["VmRSS"] - out["baseline"]["VmRSS"]
    out["file_growth_bytes"] = out["end"]["RssFile"] - out["baseline"]["RssFile"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
