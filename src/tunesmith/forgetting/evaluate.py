"""`tunesmith eval`: drift from the base on the probe, and task metrics, for a base, an adapter or a model.

    model (+ adapter) and its base -> probe + the base's answers (cached) -> probe_perplexity, kl_to_base
    (with an adapter, the base's statistics are cached too: one forward, of the adapter model, per eval)
    [task data] -> task_loss / task_perplexity on its assistant turns; when every reference answer is a
    JSON object, greedy answers scored by json_valid and per-field accuracy as well

Which base: with --adapter, the model under it (adapter switched off); with --base, that model; with
neither, the model itself, so kl_to_base is exactly 0.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tunesmith.data.formats import load_sft_file
from tunesmith.data.templates import apply_length_policy, tokenize_conversations
from tunesmith.errors import DataError
from tunesmith.eval.structured import score_structured


def _json_references(convs) -> list[dict] | None:
    """The last assistant turn of every conversation parsed as a JSON object, or None if any is not one."""
    references = []
    for conv in convs:
        answer = [m["content"] for m in conv.messages if m["role"] == "assistant"][-1]
        try:
            value = json.loads(answer)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        references.append(value)
    return references


def load_task_data(path: str, limit: int | None) -> list:
    """The task examples (the first `limit`), or a DataError naming every malformed row."""
    convs = load_sft_file(path)[:limit]
    if not convs:
        raise DataError([f"{path}: no examples"])
    return convs


def task_metrics(model, tokenizer, convs: list, max_length: int, device, amp_dtype, progress: bool = False) -> dict:
    from tunesmith.generation import generate_chat  # heavy: deferred for CLI start-up
    from tunesmith.train.step import evaluate_nll

    examples = apply_length_policy(tokenize_conversations(tokenizer, convs), max_length, "truncate").examples
    nll = evaluate_nll(model, examples, 8, False, max_length, tokenizer.pad_token_id, device, amp_dtype)
    out = {"task_examples": len(convs), "task_loss": nll, "task_perplexity": math.exp(nll)}
    references = _json_references(convs)
    if references is not None:
        prompts = [[m for m in c.messages if m["role"] != "assistant"] for c in convs]
        fields = list(dict.fromkeys(k for r in references for k in r))
        label = "eval: answering the task prompts" if progress else None
        answers = generate_chat(model, tokenizer, prompts, max_new_tokens=128, batch_size=32, progress=label)
        scored = score_structured(answers, references, fields)
        out.update({"task_json_valid": scored["json_valid"], "task_field_accuracy": scored["field_accuracy"]})
    return out


def evaluate_model(
    model: str,
    adapter: str | None = None,
    base: str | None = None,
    probe: str | None = None,
    probe_size: int = 0,
    data: str | None = None,
    max_length: int = 512,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    say=print,
    progress: bool = False,
) -> dict:
    """The numbers `tunesmith eval` prints; `progress`: bars for answering, measuring and task answers."""
    # heavy: deferred for CLI start-up
    from tunesmith.forgetting.guard import spread_subset
    from tunesmith.forgetting.measure import base_statistics, measure_drift, shares_base_head
    from tunesmith.forgetting.probe import base_answers, cached_base_stats, load_probe, probe_examples
    from tunesmith.models import resolve_model_dir
    from tunesmith.models.forward import unwrap
    from tunesmith.models.inference import load_for_inference
    from tunesmith.models.load import autocast_dtype

    items = load_probe(probe)
    convs = load_task_data(data, limit) if data else None  # bad task data fails before any model work
    items = [items[i] for i in spread_subset(len(items), probe_size)]
    tuned, tokenizer = load_for_inference(model, [adapter] if adapter else None, device)
    dev = next(tuned.parameters()).device
    amp = autocast_dtype(precision, dev)
    if adapter:
        base_dir, reference = resolve_model_dir(model), None  # the adapter switched off
    elif base:
        base_dir = resolve_model_dir(base)
        reference, _ = load_for_inference(base, None, device)
    else:
        base_dir, reference = resolve_model_dir(model), tuned  # the model is its own base
    answers = base_answers(items, base_dir, say=say, progress=progress)
    examples = probe_examples(tokenizer, items, answers)
    result: dict[str, Any] = {
        "model": model,
        "adapter": adapter,
        "base": str(base_dir),
        "probe": str(probe or "bundled"),
        "probe_prompts": len(examples),
    }
    label = "eval: drift on the probe" if progress else None
    pad = tokenizer.pad_token_id
    if adapter and shares_base_head(tuned):
        # the base's side of the KL from its statistics, cached with its answers: one forward, of the tuned model
        stats = cached_base_stats(
            base_dir,
            examples,
            str(amp).removeprefix("torch.") if amp else "fp32",
            lambda todo: base_statistics(
                tuned,
                todo,
                pad,
                amp_dtype=amp,
                progress="eval: the base on the probe (once, cached)" if progress else None,
            ),
        )
        if not getattr(unwrap(tuned), "is_quantized", False):
            tuned.merge_adapter()  # W + BA once: the same function, without LoRA's extra matmuls per layer
        drift = measure_drift(tuned, examples, pad, amp_dtype=amp, progress=label, base_stats=stats)
    else:
        drift = measure_drift(tuned, examples, pad, base=reference, amp_dtype=amp, progress=label)
    result.update(drift)
    result["probe_ppl_increase"] = result["probe_perplexity"] / result["base_probe_perplexity"] - 1.0
    if convs is not None:
        result.update(task_metrics(tuned, tokenizer, convs, max_length, dev, amp, progress))
    return result


def format_result(result: dict) -> str:
    rows = [
        ("probe_perplexity", "probe perplexity (tuned)"),
        ("base_probe_perplexity", "probe perplexity (base)"),
        ("probe_ppl_increase", "probe perplexity increase"),
        ("kl_to_base", "KL(base || tuned) per token"),
        ("task_loss", "task loss"),
        ("task_perplexity", "task perplexity"),
        ("task_json_valid", "task json_valid"),
        ("task_field_accuracy", "task field accuracy"),
    ]
    lines = [f"{label:30s} {result[key]:.4f}" for key, label in rows if key in result]
    lines.append(
        f"{'probe':30s} {result['probe']} ({result['probe_prompts']} prompts, {result['probe_tokens']} answer tokens)"
    )
    return "\n".join(lines)
