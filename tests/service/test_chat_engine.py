"""The chat engine without HTTP: one base, adapters in an LRU, requests batched, each row as if alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from tests.conftest import chat_rows, write_jsonl
from tunesmith.serve.inference import ChatEngine, ChatRequest, ChatResult, Delta, top_p_filter

TINY = "tiny-random-llama"
# Batched rows answer exactly as alone, and as `generate`, in fp32. Under bf16 autocast (precision auto on
# an AMX CPU or a GPU) the kernels' rounding depends on the batch's shape, and the tiny random model's
# near-ties then flip greedy tokens: on a 2-core AMX Xeon, 2 of 8 batched answers differed.
EXACT = "fp32"
HELLO = [{"role": "user", "content": "alpha beta gamma"}]


def train_adapter(tmp: Path) -> str:
    """A real fine-tune: two sft steps on the tiny model (its LoRA B starts at zero, so it stays close to
    the base: the tiny model answers blank lines with or without it)."""
    import tunesmith

    tmp.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp / "train.jsonl", chat_rows(16))
    return str(tunesmith.sft(model=TINY, data=str(data), out=str(tmp / "run"), max_steps=2, quiet=True).output)


def random_adapter(out: Path, seed: int) -> str:
    """A LoRA adapter with random A and B: the tiny model then answers words, differently per seed."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, resolve_model_dir

    torch.manual_seed(seed)
    model = load_model(resolve_model_dir(TINY), torch.device("cpu"))
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir) -> str:
    return train_adapter(tmp_path_factory.mktemp("chat_sft"))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_dir) -> list[str]:
    tmp = tmp_path_factory.mktemp("chat_adapters")
    return [random_adapter(tmp / "votes" / "adapter", 1), random_adapter(tmp / "vapor", 2)]


@pytest.fixture(scope="module")
def engine(tiny_dir):
    engine = ChatEngine(max_adapters=2, batch_window_s=0.2, precision=EXACT)
    yield engine
    engine.close()


def ask(engine: ChatEngine, adapter: str | None = None, **kw) -> ChatResult:
    kw = {"max_tokens": 12, "temperature": 0.0, **kw}
    return engine.submit(ChatRequest(TINY, adapter, kw.pop("messages", HELLO), **kw)).result(timeout=120)


def test_greedy_equals_tunesmith_generate(engine, adapters, trained):
    from tunesmith.generation import generate_chat
    from tunesmith.models.inference import load_for_inference

    for adapter in [None, trained, adapters[0]]:
        model, tokenizer = load_for_inference(TINY, [adapter] if adapter else None)
        expected = generate_chat(model, tokenizer, [HELLO], max_new_tokens=12, precision=EXACT)[0]
        assert ask(engine, adapter).choices[0].text.strip() == expected


def test_concurrent_requests_share_one_batch_and_answer_as_if_alone(engine, adapters):
    prompts = [[{"role": "user", "content": "word " * (i + 1)}] for i in range(8)]
    owners = [None, adapters[0], adapters[1], None, adapters[0], adapters[1], adapters[0], None]
    alone = [ask(engine, a, messages=p).choices[0].text for a, p in zip(owners, prompts)]
    calls = engine.decode_calls
    futures = [engine.submit(ChatRequest(TINY, a, p, max_tokens=12, temperature=0.0)) for a, p in zip(owners, prompts)]
    together = [f.result(timeout=120).choices[0].text for f in futures]
    assert engine.decode_calls == calls + 1 and engine.batch_rows[-1] == 8  # one mixed-adapter batch
    assert together == alone
    assert len(set(alone[:3])) > 1, "the adapters should answer differently from the base here"


def test_max_tokens_stops_with_length_and_usage_counts_tokens(engine, tokenizer, adapters):
    result = ask(engine, adapters[0], max_tokens=5, n=2)
    prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert result.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert [(c.index, c.finish_reason, c.tokens) for c in result.choices] == [(0, "length", 5), (1, "length", 5)]
    assert result.completion_tokens == 10 and result.total_tokens == result.prompt_tokens + 10
    for choice in result.choices:
        assert len(tokenizer(choice.text, add_special_tokens=False)["input_ids"]) <= 5


def test_stop_string_cuts_the_text(engine, adapters):
    text = ask(engine, adapters[0], max_tokens=16).choices[0].text
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1]
    cut = ask(engine, adapters[0], max_tokens=16, stop=["never-there", stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]


def test_seed_makes_sampling_repeatable(engine):
    one = ask(engine, temperature=1.0, seed=7, n=2)
    two = ask(engine, temperature=1.0, seed=7, n=2)
    assert [c.text for c in one.choices] == [c.text for c in two.choices]
    assert len(one.choices) == 2


def test_stream_deltas_add_up_to_the_answer(engine, adapters):
    async def collect():
        items = [
            item async for item in engine.stream(ChatRequest(TINY, adapters[0], HELLO, max_tokens=12, temperature=0.0))
        ]
        return items[:-1], items[-1]

    deltas, result = asyncio.run(collect())
    assert isinstance(result, ChatResult) and all(isinstance(d, Delta) for d in deltas)
    assert len(deltas) > 1 and "".join(d.text for d in deltas) == result.choices[0].text


def test_adapters_are_evicted_least_recently_used(tiny_dir, adapters):
    engine = ChatEngine(max_adapters=1, batch_window_s=0.0, precision=EXACT)
    try:
        first = ask(engine, adapters[0]).choices[0].text
        ask(engine, adapters[1])
        base = engine._bases[TINY]
        assert list(base.adapters) == [adapters[1]] and list(base.model.peft_config) == [base.adapters[adapters[1]]]
        assert ask(engine, adapters[0]).choices[0].text == first  # reloaded on demand, same answer
        # two adapters asked together with room for one: two batches, each with its adapter loaded
        calls = engine.decode_calls
        futures = [engine.submit(ChatRequest(TINY, a, HELLO, max_tokens=4, temperature=0.0)) for a in adapters]
        assert all(f.result(timeout=120).choices for f in futures) and engine.decode_calls == calls + 2
    finally:
        engine.close()


def test_prompt_beyond_the_context_is_refused(engine):
    from tunesmith.serve.inference import ChatError

    with pytest.raises(ChatError, match="maximum context length"):
        ask(engine, max_tokens=10**6)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    assert torch.equal(top_p_filter(probs, 0.7), torch.tensor([[0.0, 0.5, 0.3, 0.0]]))
    assert torch.equal(top_p_filter(probs, 0.0), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
    assert top_p_filter(probs, 1.0) is probs


def test_a_cancelled_request_stops_and_the_engine_goes_on(engine):
    future = engine.submit(ChatRequest(TINY, None, HELLO, max_tokens=400, temperature=0.0))
    future.cancel()
    assert ask(engine, max_tokens=3).choices[0].tokens == 3
    assert future.cancelled()
