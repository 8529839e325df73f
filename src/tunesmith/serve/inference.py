"""The chat engine behind /v1/chat/completions: one copy of each base model, fine-tunes as its PEFT adapters.

Adapters load on first use into their base and stay in a least-recently-used set of `max_adapters`.
Every request runs in one engine thread (a model's generation is not thread-safe); the requests that
arrive together for the same base decode as one left-padded batch, each row with its own adapter
(PEFT's mixed-adapter forward), sampling settings, stop strings and token budget, so 8 concurrent
requests cost about one request's decoding steps, not eight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from tunesmith.errors import ModelError, TunesmithError
from tunesmith.models.forward import adapter_off, autocast
from tunesmith.models.load import autocast_dtype, load_model, load_tokenizer, select_device
from tunesmith.models.registry import resolve_model_dir

if TYPE_CHECKING:
    from peft import PeftModel

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
DEFAULT_MAX_TOKENS = 512  # when a request names no limit (capped by what the context has left)


class ChatError(TunesmithError):
    """A request the model cannot answer as asked (prompt too long, a template that refuses the turns)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class ChatRequest:
    base: str  # as --model takes it: an alias, an HF directory or a .gguf file
    adapter: str | None  # a PEFT adapter directory, or None for the base itself
    messages: list[dict]  # [{"role", "content": str}]
    max_tokens: int | None = None
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1


@dataclass
class ChatChoice:
    index: int
    text: str
    finish_reason: Literal["stop", "length"]  # "stop" (end of turn or a stop string) or "length"
    tokens: int  # generated tokens, the end-of-turn token included


@dataclass
class ChatResult:
    choices: list[ChatChoice]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """New text of one choice, as it is decoded."""

    index: int
    text: str


@dataclass
class _Base:
    model: torch.nn.Module  # becomes a PeftModel when its first adapter loads
    tokenizer: Any  # a transformers tokenizer
    device: torch.device
    amp: torch.dtype | None
    end_ids: set[int]
    context: int
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter dir -> name, oldest first


@dataclass
class _Job:
    request: ChatRequest
    future: Future
    on_delta: Callable[[Delta], object] | None
    prompt_ids: list[int] = field(default_factory=list)
    max_tokens: int = 0
    adapter_name: str = BASE
    rows_left: int = 0


class _Row:
    """One choice being decoded: its tokens, its text so far, and what has been streamed of it."""

    def __init__(self, job: _Job, index: int):
        self.job, self.index = job, index
        self.ids: list[int] = []
        self.tokens = 0
        self.text = ""
        self.sent = ""
        self.finish: Literal["stop", "length"] | None = None

    def advance(self, token: int, base: _Base) -> None:
        request = self.job.request
        self.tokens += 1
        if token in base.end_ids:
            self.finish = "stop"
        else:
            self.ids.append(token)
            self.text = base.tokenizer.decode(self.ids, skip_special_tokens=True)
            cut = min((i for i in (self.text.find(s) for s in request.stop if s) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
            elif self.tokens >= self.job.max_tokens:
                self.finish = "length"
        self._emit(request.stop)

    def _emit(self, stops: list[str]) -> None:
        visible = self.text
        if self.finish is None:
            # hold back what may yet become a stop string, or half of a multi-byte character
            hold = max((len(s) for s in stops), default=1) - 1
            visible = visible[: len(visible) - hold] if hold else visible
            visible = visible.rstrip("\ufffd")
        if len(visible) > len(self.sent) and visible.startswith(self.sent):
            if self.job.on_delta is not None:
                self.job.on_delta(Delta(self.index, visible[len(self.sent) :]))
            self.sent = visible


def adapter_key(path: str) -> str:
    """A PEFT adapter name for a directory: readable (its run's name) and unique (a hash of the path)."""
    resolved = Path(path).resolve()
    stem = resolved.parent.name if resolved.name == "adapter" else resolved.name
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', stem)[:40]}-{digest}"


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose probability reaches top_p (nucleus)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
    drop[..., 0] = False  # the most likely token always stays (top_p = 0 is greedy)
    sorted_p[drop] = 0.0
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def pick_tokens(logits: torch.Tensor, sampled: list[tuple[_Job, torch.Tensor, torch.Generator]]) -> torch.Tensor:
    """Greedy (argmax) for every row, then the sampled jobs' rows drawn from softmax(logits / T), top-p cut."""
    picks = logits.argmax(-1)
    for job, rows, generator in sampled:
        probs = top_p_filter(torch.softmax(logits[rows] / job.request.temperature, -1), job.request.top_p)
        picks[rows] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return picks


class ChatEngine:
    """Answers ChatRequests in a background thread, batching those that arrive together.

    `submit` is the thread-safe entry point; `complete` and `stream` are its asyncio faces.
    `decode_calls` and `batch_rows` count the batched decoding loops and their rows (tests read them).
    """

    def __init__(
        self,
        max_adapters: int = 8,
        device: str = "auto",
        precision: str = "auto",
        batch_window_s: float = 0.01,
        max_batch_rows: int = 64,
    ):
        self.max_adapters = max(1, int(max_adapters))
        self.device = select_device(device)
        self.precision = precision
        self.batch_window_s = batch_window_s
        self.max_batch_rows = max_batch_rows
        self.decode_calls = 0
        self.batch_rows: list[int] = []
        self._bases: dict[str, _Base] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    # -- the public faces ---------------------------------------------------------------------

    def submit(self, request: ChatRequest, on_delta: Callable[[Delta], object] | None = None) -> Future:
        """A Future of the ChatResult; on_delta(Delta) is called from the engine thread as text decodes.
        Cancelling the future stops its rows at the next decoding step."""
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve_forever, name="tunesmith-chat", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put(_Job(request, future, on_delta))
        return future

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await asyncio.wrap_future(self.submit(request))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta | ChatResult, None]:
        """Deltas as they decode, then the ChatResult last (an engine error is raised instead)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        end = object()
        future = self.submit(request, on_delta=lambda d: loop.call_soon_threadsafe(items.put_nowait, d))
        # added after submit: runs after the last delta was queued, so it arrives last
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(items.put_nowait, end))
        try:
            while (item := await items.get()) is not end:
                yield item
            yield future.result()
        finally:
            future.cancel()  # a client that went away frees its rows

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    # -- the engine thread -------------------------------------------------------------------

    def _serve_forever(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs, stop = self._gather(job)
            by_base: dict[str, list[_Job]] = {}
            for j in jobs:
                by_base.setdefault(j.request.base, []).append(j)
            for base, group in by_base.items():
                self._serve_base(base, group)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus whatever else arrives within the batch window (or is already waiting)."""
        jobs, rows = [first], first.request.n
        deadline = time.monotonic() + self.batch_window_s
        while rows < self.max_batch_rows:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.request.n
        return jobs, False

    def _serve_base(self, name: str, jobs: list[_Job]) -> None:
        try:
            base = self._load_base(name)
        except Exception as e:  # noqa: BLE001 - handed to each waiting request
            for job in jobs:
                _fail(job, e)
            return
        ready = []
        for job in jobs:
            try:
                self._prepare(base, job)
                ready.append(job)
            except Exception as e:  # noqa: BLE001
                _fail(job, e)
        for chunk in self._chunks(ready):
            try:
                keep = {j.request.adapter for j in chunk if j.request.adapter}
                for job in chunk:
                    job.adapter_name = self._load_adapter(base, job.request.adapter, keep)
                self._decode(base, chunk)
            except Exception as e:  # noqa: BLE001
                for job in chunk:
                    _fail(job, e)

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Batches of at most max_batch_rows rows and max_adapters distinct adapters (all loaded at once)."""
        chunks: list[list[_Job]] = []
        adapters: set[str | None]
        rows, adapters = 0, set()
        for job in jobs:
            new = {job.request.adapter} - adapters - {None}
            if chunks and (rows + job.request.n > self.max_batch_rows or len(adapters | new) > self.max_adapters):
                chunks.append([])
                rows, adapters = 0, set()
            if not chunks:
                chunks.append([])
            chunks[-1].append(job)
            rows += job.request.n
            adapters |= {job.request.adapter} - {None}
        return chunks

    def _load_base(self, name: str) -> _Base:
        if name not in self._bases:
            from tunesmith.generation import end_of_turn_ids

            model_dir = resolve_model_dir(name)
            tokenizer = load_tokenizer(model_dir)
            model = load_model(model_dir, self.device)
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            context = int(getattr(config, "max_position_embeddings", None) or 2048)
            self._bases[name] = _Base(
                model,
                tokenizer,
                self.device,
                autocast_dtype(self.precision, self.device),
                set(end_of_turn_ids(tokenizer)),
                context,
            )
        return self._bases[name]

    def _load_adapter(self, base: _Base, adapter: str | None, keep: set[str]) -> str:
        """The adapter's PEFT name in `base`, loading it on first use; evicts the least recently used
        adapters not in `keep` (this batch's) beyond max_adapters."""
        if adapter is None:
            return BASE
        if adapter in base.adapters:
            base.adapters.move_to_end(adapter)
            return base.adapters[adapter]
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError(f"{adapter}: not an adapter directory (no adapter_config.json)")
        from peft import PeftModel  # heavy: peft, only when a fine-tune is asked for

        name = adapter_key(adapter)
        if isinstance(base.model, PeftModel):
            base.model.load_adapter(adapter, adapter_name=name)
        else:
            base.model = PeftModel.from_pretrained(base.model, adapter, adapter_name=name)
        base.model.eval()
        base.adapters[adapter] = name
        for old in [a for a in base.adapters if a not in keep][: max(0, len(base.adapters) - self.max_adapters)]:
            base.model.delete_adapter(base.adapters.pop(old))
        return name

    def _prepare(self, base: _Base, job: _Job) -> None:
        """Render and tokenize the prompt as `tunesmith generate` does; check it fits the context."""
        try:
            text = base.tokenizer.apply_chat_template(job.request.messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja's TemplateError: e.g. a template that insists on alternating turns
            raise ChatError(f"messages: the model's chat template refused them: {e}", param="messages") from None
        job.prompt_ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = base.context - len(job.prompt_ids)
        job.max_tokens = job.request.max_tokens or min(DEFAULT_MAX_TOKENS, room)
        if room < 1 or job.max_tokens > room:
            raise ChatError(
                f"This model's maximum context length is {base.context} tokens. However, you requested "
                f"{len(job.prompt_ids) + job.max_tokens} tokens ({len(job.prompt_ids)} in the messages, "
                f"{job.max_tokens} in the completion).",
                param="messages",
                code="context_length_exceeded",
            )
        job.rows_left = job.request.n

    @torch.no_grad()
    def _decode(self, base: _Base, jobs: list[_Job]) -> None:
        """One left-padded batch through the model with a KV cache, a token per row per step."""
        rows = [_Row(job, i) for job in jobs for i in range(job.request.n)]
        width = max(len(job.prompt_ids) for job in jobs)
        pad = base.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.job.prompt_ids)) + r.job.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.job.prompt_ids)) + [1] * len(r.job.prompt_ids) for r in rows])
        ids, mask = ids.to(base.device), mask.to(base.device)
        # positions count real tokens only, as generate() does: a left-padded row starts at 0 too
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        sampled = []
        for job in jobs:
            if job.request.temperature > 0:
                generator = torch.Generator(base.device)
                generator.manual_seed(job.request.seed) if job.request.seed is not None else generator.seed()
                members = torch.tensor([i for i, r in enumerate(rows) if r.job is job], device=base.device)
                sampled.append((job, members, generator))
        self.decode_calls += 1
        self.batch_rows.append(len(rows))
        cache = None
        with _adapter_choice(base, [r.job.adapter_name for r in rows]) as extra, autocast(base.device, base.amp):
            for _ in range(max(job.max_tokens for job in jobs)):
                out = base.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **extra,
                )
                cache = out.past_key_values
                picks = pick_tokens(out.logits[:, -1].float(), sampled)
                for row, token in zip(rows, picks.tolist()):
                    if row.finish is not None:
                        continue
                    if row.job.future.cancelled():
                        row.finish = "stop"
                    else:
                        row.advance(token, base)
                    if row.finish is not None:
                        _row_done(row, rows)
                if all(r.finish is not None for r in rows):
                    break
                ids, positions = picks[:, None], positions[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)


@contextlib.contextmanager
def _adapter_choice(base: _Base, names: list[str]):
    """How a batch's rows select their adapters, as extra forward kwargs: the adapters switched off for a
    base-only batch, the one active adapter when all rows share it, else PEFT's mixed-adapter batch
    (`adapter_names`, one per row: each LoRA layer runs every adapter on its own rows only)."""
    distinct = set(names)
    if not base.adapters:
        yield {}
    elif distinct == {BASE}:
        with adapter_off(base.model):
            yield {}
    elif len(distinct) == 1:
        cast("PeftModel", base.model).set_adapter(names[0])  # a model with adapters is a PeftModel
        yield {}
    else:
        yield {"adapter_names": names}


def _row_done(row: _Row, rows: list[_Row]) -> None:
    """Answer a job as soon as its last row finishes, not when the whole batch does."""
    job = row.job
    job.rows_left -= 1
    if job.rows_left == 0 and not job.future.done():
        choices = [ChatChoice(r.index, r.text, r.finish or "stop", r.tokens) for r in rows if r.job is job]
        _settle(job.future, ChatResult(choices, len(job.prompt_ids)))


def _settle(future: Future, result: ChatResult | None = None, error: BaseException | None = None) -> None:
    if future.set_running_or_notify_cancel():  # False: the caller cancelled; nobody is waiting
        future.set_exception(error) if error is not None else future.set_result(result)


def _fail(job: _Job, error: BaseException) -> None:
    if not job.future.done():
        _settle(job.future, error=error)
