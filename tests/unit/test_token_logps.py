"""batch_token_logps: per-token log-probs of the completion, under the sampling temperature."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.data.packing import collate_padded
from tunesmith.models.forward import batch_token_logps
from tunesmith.rollout.sampling import completion_example


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logps_are_log_softmax_of_logits_over_temperature(tiny_dir, temperature):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    examples = [completion_example([5, 6, 7], [8, 9, 10, 11], "a"), completion_example([12, 13], [14, 15], "b")]
    batch = collate_padded(examples, pad_id=0)
    with torch.no_grad():
        logp, mask, _ = batch_token_logps(model, batch, None, temperature)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = torch.log_softmax(logits.float() / temperature, -1)
    for row, (prompt_len, completion) in enumerate([(3, [8, 9, 10, 11]), (2, [14, 15])]):
        # position t predicts token t+1: the completion's tokens are predicted from prompt_len - 1 on
        want = torch.tensor([expected[row, prompt_len - 1 + i, tok] for i, tok in enumerate(completion)])
        assert torch.allclose(logp[row][mask[row]], want, atol=1e-5)
    assert int(mask.sum()) == 6
