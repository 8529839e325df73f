"""`tunesmith chat`: talk to a model (and adapter) in the terminal, token by token."""

from __future__ import annotations

import sys

from tunesmith.config.load import add_trust_remote_code
from tunesmith.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat with streaming replies (chat template applied)",
        description="Type a message and press Enter; /reset clears the history, /exit (or Ctrl-D) "
        "ends. Replies stop at the chat template's end-of-turn token.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF directory or .gguf file")
    p.add_argument("--adapter", action="append", default=[], help="PEFT adapter directory (the last one is used)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--device", default="auto")
    add_trust_remote_code(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.generation import chat_loop  # heavy: deferred for CLI start-up
    from tunesmith.models.inference import load_for_inference

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
    model, tokenizer = load_for_inference(
        args.model, args.adapter, args.device, trust_remote_code=args.trust_remote_code
    )
    interactive = sys.stdin.isatty()

    def read() -> str:
        line = input("you> ") if interactive else sys.stdin.readline()
        if not interactive and not line:
            raise EOFError
        if not interactive:
            print(f"you> {line.rstrip()}")
        return line.rstrip("\n")

    def write(text: str) -> None:
        print(text, end="", flush=True)

    chat_loop(
        model,
        tokenizer,
        read,
        write,
        args.system,
        "bot> ",
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    return 0
