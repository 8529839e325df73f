"""Render conversations with the tokenizer's chat template and mark which tokens the loss covers.

Masking is template-agnostic: for assistant turn i, the text rendered for messages[:i] with the
generation prompt is a prefix of the text rendered for messages[:i+1]; the characters in between are
the assistant's reply (with its end-of-turn token). Tokens whose first character falls in such a span
are trained; all others get the label -100.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.formats import Conversation
from tunesmith.errors import DataError

IGNORE = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids: label[t] is input_ids[t] or IGNORE (not yet shifted)
    where: str
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    @property
    def num_targets(self) -> int:
        """Positions the loss covers once shifted: the first token is never predicted."""
        return sum(label != IGNORE for label in self.labels[1:])


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_with_spans(tokenizer, conv: Conversation, train_on_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the loss covers."""
    try:
        return _render_with_spans(tokenizer, conv, train_on_prompt)
    except DataError:
        raise
    except Exception as e:  # the template refuses the conversation (e.g. an assistant turn first)
        raise DataError([f"{conv.where}: the chat template cannot render this conversation: {e}"]) from None


def _render_with_spans(tokenizer, conv: Conversation, train_on_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    text = _render(tokenizer, conv.messages, add_generation_prompt=False)
    if train_on_prompt:
        return text, [(0, len(text))]
    spans = []
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant" or not m["weight"]:
            continue
        before = _render(tokenizer, conv.messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, conv.messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError(
                [
                    f"{conv.where}: the chat template does not render this conversation "
                    "prefix by prefix, so assistant tokens cannot be located; use --train-on-prompt"
                ]
            )
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversations(
    tokenizer, convs: list[Conversation], train_on_prompt: bool = False, batch_size: int = 256
) -> list[TokenizedExample]:
    """Tokenize in batches (the Rust tokenizer parallelises) and label the trained tokens."""
    out = []
    for start in range(0, len(convs), batch_size):
        chunk = convs[start : start + batch_size]
        rendered = [render_with_spans(tokenizer, c, train_on_prompt) for c in chunk]
        enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for conv, (_, spans), ids, offsets in zip(chunk, rendered, enc["input_ids"], enc["offset_mapping"]):
            labels = [
                tok if any(a <= begin < b for a, b in spans) else IGNORE for tok, (begin, _end) in zip(ids, offsets)
            ]
            out.append(TokenizedExample(list(ids), labels, conv.where))
    return out


@dataclass
class LengthPolicyResult:
    examples: list[TokenizedExample]
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_empty: int = 0  # truncation removed every trained token


def apply_length_policy(examples: list[TokenizedExample], max_length: int, overlength: str) -> LengthPolicyResult:
    """Truncate (keep the first `max_length` tokens) or drop examples longer than `max_length`."""
    result = LengthPolicyResult([])
    for ex in examples:
        if len(ex.input_ids) <= max_length:
            result.examples.append(ex)
            continue
        if overlength == "drop":
            result.dropped_overlength += 1
            continue
        cut = TokenizedExample(ex.input_ids[:max_length], ex.labels[:max_length], ex.where, truncated=True)
        if cut.num_trained == 0:
            result.dropped_empty += 1
            continue
        result.truncated += 1
        result.examples.append(cut)
    return result
