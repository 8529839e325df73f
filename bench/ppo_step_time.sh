#!/bin/bash
# PPO's step time at an earlier commit against this checkout (issue 20 req 4: PPO against its own previous
# step time): the same reward model, prompts and settings, each run in a fresh process, 4 steps of 8
# rollouts of up to 64 new tokens, 4 PPO epochs, LoRA r16 on SmolLM2-135M-Instruct.
#
#   bash bench/ppo_step_time.sh [OLD_COMMIT]      # default 62f5410: before issue 20's sampling changes
#   PRECS="auto fp32" TREES="old new" STEPS=4 WORK=/tmp/ppo_step_time (the defaults)
#
# Prints each run's seconds per step (metrics.jsonl's step_s) and mean completion length; ~10 min on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:-62f5410}
W=${WORK:-/tmp/ppo_step_time}
mkdir -p "$W"
D=$ROOT/src/tunesmith/demo/data
COMMON="--model smollm2-135m-instruct --method lora --save-every 0 --no-progress --overwrite"
[ -d "$W/old" ] || git -C "$ROOT" worktree add -f "$W/old" "$OLD" -q
if [ ! -f "$W/rm/run.json" ]; then
  PYTHONPATH=$ROOT/src python -m tunesmith reward $COMMON --precision fp32 --data "$D/tone_train.jsonl" \
    --max-length 128 --max-steps 10 --lr 5e-4 --out "$W/rm" > "$W/rm.log" 2>&1
fi
python - "$D/tone_heldout.jsonl" "$W/prompts.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        out.write(json.dumps({"messages": json.loads(line)["prompt"]}) + "\n")
PY
for prec in ${PRECS:-auto fp32}; do
  for tree in ${TREES:-old new}; do
    src=$W/old/src; [ "$tree" = new ] && src=$ROOT/src
    PYTHONPATH=$src python -m tunesmith ppo $COMMON --precision "$prec" --reward-model "$W/rm" \
      --prompts "$W/prompts.jsonl" --rollouts-per-step 8 --max-new-tokens 64 --ppo-epochs 4 \
      --max-steps "${STEPS:-4}" --out "$W/ppo-$tree-$prec" > "$W/ppo-$tree-$prec.log" 2>&1
    python - "$W/ppo-$tree-$prec/metrics.jsonl" "$tree" "$prec" "$OLD" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if "step_s" in line]
label = sys.argv[4] if sys.argv[2] == "old" else "this checkout"
steps = [round(r["step_s"], 1) for r in rows]
print(f"{label:14s} {sys.argv[3]:5s} s/step {steps} median {statistics.median(steps):.1f}",
      f"mean tokens {statistics.mean(r['response_length'] for r in rows):.1f}")
PY
  done
done
