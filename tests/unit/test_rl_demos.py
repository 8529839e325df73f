"""The GRPO and PPO demos' inputs: prompts built from the bundled data, and the --out guard."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.prompts import load_prompt_file
from tunesmith.demo import grpo, ppo
from tunesmith.demo.run import HELDOUT_FILE
from tunesmith.demo.task import EXAMPLE_ANSWER, FIELDS
from tunesmith.errors import OutputError
from tunesmith.rollout.rewards import parse_reward_specs, score_completions


def test_grpo_prompts_carry_the_message_and_its_reference(tmp_path):
    target = tmp_path / "p.jsonl"
    assert grpo.write_prompts(HELDOUT_FILE, target, limit=5) == 5
    rows = load_prompt_file(target)
    assert len(rows) == 5
    for row in rows:
        assert [m["role"] for m in row.messages] == ["user"]
        assert EXAMPLE_ANSWER in row.messages[0]["content"]
        assert list(row.row["reference"]) == list(FIELDS)
    # the rewards accept these rows, and the reference answer itself earns the maximum
    rewards = parse_reward_specs(",".join(grpo.REWARDS))
    answers = [json.dumps(r.row["reference"]) for r in rows]
    totals, parts = score_completions(rewards, [r.messages for r in rows], answers, [r.row for r in rows])
    assert totals == [2.0] * 5
    # copying the prompt's example answer is valid JSON but gets (almost) no field right
    copied, _ = score_completions(rewards, [r.messages for r in rows], [EXAMPLE_ANSWER] * 5, [r.row for r in rows])
    assert all(1.0 <= t < 1.5 for t in copied)


@pytest.mark.parametrize("module, marker", [(grpo, "grpo/config.yaml"), (ppo, "reward/config.yaml")])
def test_demo_out_replaces_only_its_own_directory(tmp_path, module, marker):
    module.check_out(tmp_path / "new")  # absent: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        module.check_out(other)
    previous = tmp_path / "previous"
    (previous / marker).parent.mkdir(parents=True)
    (previous / marker).write_text("")
    module.check_out(previous)


def test_ppo_demo_gain_is_paired_by_message():
    """Two messages, two replies each: d = (mean after − mean before) per message = [1.0, 3.0], gain 2.0,
    s.e. = sd(d) / sqrt(2) = sqrt(2) / sqrt(2) = 1.0. The messages' spread (0 against 10) cancels in d,
    where independent standard errors of the before and after means would count it."""
    before = [0.0, 0.0, 10.0, 10.0]
    after = [0.5, 1.5, 13.0, 13.0]
    gain, se = ppo.paired_gain(before, after, per=2)
    assert gain == pytest.approx(2.0) and se == pytest.approx(1.0)
    unpaired = (ppo.stderr(before) ** 2 + ppo.stderr(after) ** 2) ** 0.5
    assert unpaired > 3 * se
