"""POST /v1/chat/completions: a base model or a fine-tune, answered whole or streamed as server-sent events.

The router only checks the request and asks app.state.resolve_model which base and adapter a name means;
the app's one ChatEngine (serve/inference.py) loads, batches and decodes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.errors import TunesmithError
from tunesmith.serve.auth import current_owner
from tunesmith.serve.errors import openai_error
from tunesmith.serve.inference import ChatEngine, ChatError, ChatRequest, ChatResult, Delta
from tunesmith.serve.protocol_chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    Usage,
    completion_id,
)

router = APIRouter()

# fields that would change the answer in ways tunesmith does not implement: refused, never ignored
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    "audio",
    "prediction",
)


def chat_engine(app: FastAPI) -> ChatEngine:
    """The app's one engine, created on the first chat request (a server that never chats loads no model)."""
    engine = getattr(app.state, "engine", None)
    if engine is None:
        engine = app.state.engine = ChatEngine(max_adapters=app.state.settings.max_adapters)
    return engine


def request_problem(body: ChatCompletionRequest) -> tuple[str, str] | None:
    """(message, param) for the first value OpenAI would refuse with a 400, or None."""
    if not body.messages:
        return "messages: at least one message is required", "messages"
    for i, message in enumerate(body.messages):
        if message.content is None and message.role != "assistant":
            return f"messages[{i}].content: required for role '{message.role}'", f"messages[{i}].content"
    if body.n is not None and not 1 <= body.n <= 128:
        return f"n: {body.n} is not between 1 and 128", "n"
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(body, name)
        if value is not None and value < 1:
            return f"{name}: {value} is less than the minimum of 1", name
    if body.temperature is not None and not 0 <= body.temperature <= 2:
        return f"temperature: {body.temperature} is not between 0 and 2", "temperature"
    if body.top_p is not None and not 0 <= body.top_p <= 1:
        return f"top_p: {body.top_p} is not between 0 and 1", "top_p"
    for name in UNSUPPORTED:
        value = (body.model_extra or {}).get(name)
        if value not in (None, False, 0, [], {}, "none", "auto"):
            return f"{name}: not supported by tunesmith serve", name
    return None


def engine_request(body: ChatCompletionRequest, base: str, adapter: str | None) -> ChatRequest:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return ChatRequest(
        base=base,
        adapter=adapter,
        messages=[m.as_template_message() for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop,
        seed=body.seed,
        n=body.n or 1,
    )


def usage_of(result: ChatResult) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, total_tokens=result.total_tokens
    )


def engine_error(error: Exception) -> JSONResponse:
    if isinstance(error, ChatError):
        return openai_error(400, str(error), param=error.param, code=error.code)
    if isinstance(error, TunesmithError):
        return openai_error(400, str(error))
    raise error


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, owner: str = Depends(current_owner)):
    problem = request_problem(body)
    if problem is not None:
        return openai_error(400, problem[0], param=problem[1], code="invalid_value")
    resolved = await run_in_threadpool(request.app.state.resolve_model, owner, body.model)
    if resolved is None:
        return openai_error(
            404,
            f"The model '{body.model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    chat = engine_request(body, *resolved)
    engine = chat_engine(request.app)
    if body.stream:
        events = engine.stream(chat)
        try:  # the first event, before the 200 goes out: a prompt the model refuses still gets its 400
            first = await anext(events)
        except Exception as e:  # noqa: BLE001 - engine_error re-raises what is not the user's
            return engine_error(e)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse_chunks(body.model, chat.n, first, events, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    try:
        result = await engine.complete(chat)
    except Exception as e:  # noqa: BLE001
        return engine_error(e)
    choices = [
        Choice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
        for c in result.choices
    ]
    return ChatCompletion(model=body.model, choices=choices, usage=usage_of(result))


async def sse_chunks(
    model: str, n: int, first: Delta | ChatResult, events: AsyncGenerator[Delta | ChatResult, None], include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk per choice, content chunks, a finish chunk per choice, the usage chunk
    when asked for, then [DONE]."""
    chunk_id, created = completion_id(), int(time.time())

    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json()}\n\n"

    for index in range(n):
        yield event([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))])
    item = first
    try:
        while isinstance(item, Delta):
            yield event([ChunkChoice(index=item.index, delta=ChunkDelta(content=item.text))])
            item = await anext(events)
    except Exception as e:  # noqa: BLE001 - the 200 is out: the error goes in the stream, as OpenAI's does
        error = openai_error(500, f"generation failed: {type(e).__name__}: {e}")
        yield f"data: {cast(bytes, error.body).decode()}\n\n"  # a JSONResponse renders bytes
        return
    finally:
        await events.aclose()
    for choice in item.choices:
        yield event([ChunkChoice(index=choice.index, delta=ChunkDelta(), finish_reason=choice.finish_reason)])
    if include_usage:
        yield event([], usage_of(item))
    yield "data: [DONE]\n\n"
