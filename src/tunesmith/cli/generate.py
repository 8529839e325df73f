"""`tunesmith generate`: complete a prompt with a base model and optional adapters."""

from __future__ import annotations

from tunesmith.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt (chat template applied)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF directory or .gguf file")
    p.add_argument("--adapter", action="append", default=[], help="PEFT adapter directory (repeatable)")
    p.add_argument("--prompt", action="append", required=True, help="user message (repeatable)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.generation import generate_chat, load_for_inference

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens: must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    model, tokenizer = load_for_inference(args.model, args.adapter, args.device)
    outputs = generate_chat(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_p,
                            system=args.system, seed=args.seed)
    for i, text in enumerate(outputs):
        if len(outputs) > 1:
            print(f"--- prompt {i + 1}")
        print(text)
    return 0
