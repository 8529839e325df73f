"""POST /v1/chat/completions through the official openai SDK against a real uvicorn on a loopback port.

The app here is the chat router alone, with the core's contract played by doubles: app.state.settings
(max_adapters), app.state.resolve_model(owner, name) -> (base, adapter dir) | None, and current_owner
read off the bearer key. So these tests pin the chat endpoint whatever the rest of the server does.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from fastapi import Request

from tests.service.test_chat_engine import EXACT, TINY, random_adapter, train_adapter

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "sk-chat-alice"
HELLO = [{"role": "user", "content": "alpha beta gamma"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_app(models: dict[str, tuple[str, str | None]]):
    from fastapi import FastAPI

    from tunesmith.serve.api.chat import router
    from tunesmith.serve.auth import current_owner
    from tunesmith.serve.errors import APIError, install_error_handlers
    from tunesmith.serve.inference import ChatEngine

    def owner_of_key(request: Request) -> str:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return "alice"

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.dependency_overrides[current_owner] = owner_of_key
    app.state.settings = SimpleNamespace(max_adapters=2, models=[], home=None)
    app.state.resolve_model = lambda owner, name: models.get(name) if owner == "alice" else None
    # a wide batch window: requests the test sends together are certainly batched together
    app.state.engine = ChatEngine(max_adapters=2, batch_window_s=0.1, precision=EXACT)
    return app


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_dir) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("chat_api")
    return {
        "ft:tiny-random-llama:alice:sft:abc": train_adapter(tmp / "sft"),
        "ft:tiny-random-llama:alice:votes:def": random_adapter(tmp / "votes", 1),
        "ft:tiny-random-llama:alice:vapor:ghi": random_adapter(tmp / "vapor", 2),
    }


@pytest.fixture(scope="module")
def server(adapters):
    app = chat_app({TINY: (TINY, None), **{name: (TINY, path) for name, path in adapters.items()}})
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v1", app=app)
    srv.should_exit = True
    thread.join(timeout=10)
    app.state.engine.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


VOTES = "ft:tiny-random-llama:alice:votes:def"


def test_chat_with_base_and_fine_tune(client, tokenizer):
    for model in [TINY, VOTES]:
        reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=6, temperature=0)
        assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == model
        choice = reply.choices[0]
        assert choice.message.role == "assistant" and choice.finish_reason == "length" and choice.logprobs is None
        prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
            prompt_tokens,
            6,
            prompt_tokens + 6,
        )


def test_greedy_reply_equals_tunesmith_generate(client, adapters):
    from tunesmith.generation import generate_chat
    from tunesmith.models.inference import load_for_inference

    for name in ["ft:tiny-random-llama:alice:sft:abc", VOTES]:
        model, tokenizer = load_for_inference(TINY, [adapters[name]])
        expected = generate_chat(model, tokenizer, [HELLO], max_new_tokens=10, precision=EXACT)[0]
        reply = client.chat.completions.create(model=name, messages=HELLO, max_completion_tokens=10, temperature=0)
        assert reply.choices[0].message.content.strip() == expected


def test_stream_matches_the_whole_reply_and_counts_usage(client):
    whole = client.chat.completions.create(model=VOTES, messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=VOTES,
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_n_stop_and_seed(client):
    two = client.chat.completions.create(model=VOTES, messages=HELLO, max_tokens=8, temperature=1.0, seed=3, n=2)
    again = client.chat.completions.create(model=VOTES, messages=HELLO, max_tokens=8, temperature=1.0, seed=3, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]
    assert two.usage.completion_tokens == sum(8 for _ in two.choices)

    text = client.chat.completions.create(model=VOTES, messages=HELLO, max_tokens=10, temperature=0)
    text = text.choices[0].message.content
    stop = text.split()[1]
    cut = client.chat.completions.create(model=VOTES, messages=HELLO, max_tokens=10, temperature=0, stop=stop)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[: text.index(stop)]


def test_error_bodies(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="ft:nobody:x", messages=HELLO)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    response = httpx.post(
        f"{server.url}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "nope", "messages": HELLO},
    )
    assert response.status_code == 404 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    for bad, param in [
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"tools": [{"type": "function"}]}, "tools"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{"model": TINY, "messages": HELLO, **bad})
        assert e.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=10**6)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0).chat.completions.create(
            model=TINY, messages=HELLO
        )


def test_concurrent_requests_are_batched(server, client):
    engine = server.app.state.engine
    models = [TINY, VOTES, "ft:tiny-random-llama:alice:vapor:ghi", VOTES] * 2
    messages = [[{"role": "user", "content": f"question {i}: " + "word " * i}] for i in range(8)]

    def ask(i: int) -> str:
        reply = client.chat.completions.create(model=models[i], messages=messages[i], max_tokens=24, temperature=0)
        return reply.choices[0].message.content

    start = time.perf_counter()
    sequential = [ask(i) for i in range(8)]
    sequential_s = time.perf_counter() - start
    calls = engine.decode_calls
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, range(8)))
    concurrent_s = time.perf_counter() - start
    print(
        f"8 sequential: {sequential_s:.2f}s, 8 concurrent: {concurrent_s:.2f}s "
        f"({sequential_s / concurrent_s:.1f}x), batches {engine.batch_rows[-(engine.decode_calls - calls) :]}"
    )
    assert concurrent == sequential  # each row answers as if alone, whatever shares its batch
    assert engine.decode_calls - calls <= 2  # shared forward passes, not eight decoding loops
    assert concurrent_s < sequential_s
