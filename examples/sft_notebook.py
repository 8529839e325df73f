# %% [markdown]
# # The demo's fine-tune, from Python
#
# The same job as `tunesmith demo`, written as notebook cells against the public API: score the embedded
# SmolLM2-135M-Instruct on held-out support messages, fine-tune a LoRA adapter on the bundled data, score
# the tuned model, and look at the metrics. Run it as a script (`python examples/sft_notebook.py`) or
# paste the cells into a notebook. `--model tiny-random-llama --max-steps 2 --limit 4` makes it a smoke
# test (the tests run it so).

# %%
import argparse
import json

import tunesmith
from tunesmith.data.formats import load_sft_file
from tunesmith.demo.run import HELDOUT_FILE, TRAIN_FILE, score_model

args = argparse.ArgumentParser()
args.add_argument("--model", default="smollm2-135m-instruct")
args.add_argument("--max-steps", type=int, default=72)
args.add_argument("--limit", type=int, default=120, help="held-out messages scored")
args.add_argument("--out", default="runs/notebook")
args = args.parse_known_args()[0]  # a notebook kernel passes its own arguments
heldout = load_sft_file(HELDOUT_FILE)[: args.limit]

# %% The base model, before
base, tokenizer = tunesmith.load(args.model)
before, _ = score_model(base, tokenizer, heldout)
print("before:", json.dumps({k: before[k] for k in ("json_valid", "field_accuracy")}))

# %% Fine-tune: keyword arguments are the `tunesmith sft` flags; on_event sees every metrics row
losses = []
run = tunesmith.sft(
    model=args.model,
    data=str(TRAIN_FILE),
    out=args.out,
    overwrite=True,
    method="lora",
    lora_r=16,
    lr=2e-3,
    batch_size=8,
    max_length=256,
    max_steps=args.max_steps,
    save_every=0,
    on_event=lambda e: e["type"] == "metrics" and "loss" in e["data"] and losses.append(e["data"]["loss"]),
)
print(f"{run.steps} steps in {run.seconds:.0f} s, final loss {run.final['loss']:.4f}, adapter in {run.output}")
assert len(losses) == run.steps == len([r for r in run.metrics if "loss" in r])

# %% The tuned model, after
tuned, tokenizer = tunesmith.load(run.run_dir, merge=True)
after, outputs = score_model(tuned, tokenizer, heldout)
print("after: ", json.dumps({k: after[k] for k in ("json_valid", "field_accuracy")}))
print("first reply:", outputs[0])
