"""`tunesmith generate`: complete a prompt with a base model and optional adapters."""

from __future__ import annotations

import contextlib

from tunesmith.config.load import add_trust_remote_code
from tunesmith.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt (chat template applied)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF directory or .gguf file")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="PEFT adapter directory (repeatable; each is named after its folder, or its run for RUN/adapter)",
    )
    p.add_argument(
        "--use",
        action="append",
        default=[],
        help="which adapter answers: a name, or `base` for none; "
        "once for every prompt, or once per --prompt in order (default: the last adapter)",
    )
    p.add_argument("--prompt", action="append", required=True, help="user message (repeatable)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    add_trust_remote_code(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.generation import generate_chat  # heavy: deferred for CLI start-up
    from tunesmith.models.inference import adapter_names, load_for_inference

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens: must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    names = adapter_names(args.adapter)
    use = args.use or [names[-1] if names else "base"]
    if len(use) not in (1, len(args.prompt)):
        raise ConfigError(f"--use: give it once, or once per --prompt ({len(args.prompt)}); got {len(use)}")
    unknown = sorted(set(use) - set(names) - {"base"})
    if unknown:
        raise ConfigError(f"--use {', '.join(unknown)}: no such adapter; loaded: {', '.join(names + ['base'])}")
    use = use * len(args.prompt) if len(use) == 1 else use
    model, tokenizer = load_for_inference(
        args.model, args.adapter, args.device, trust_remote_code=args.trust_remote_code
    )
    outputs = [""] * len(args.prompt)
    for name in dict.fromkeys(use):  # one batch per adapter
        idx = [i for i, u in enumerate(use) if u == name]
        context = model.disable_adapter() if name == "base" and names else contextlib.nullcontext()
        if name != "base":
            model.set_adapter(name)
        with context:
            texts = generate_chat(
                model,
                tokenizer,
                [args.prompt[i] for i in idx],
                args.max_new_tokens,
                args.temperature,
                args.top_p,
                system=args.system,
                seed=args.seed,
            )
        for i, text in zip(idx, texts):
            outputs[i] = text
    for i, text in enumerate(outputs):
        if len(outputs) > 1:
            print(f"--- prompt {i + 1}" + (f" ({use[i]})" if len(set(use)) > 1 else ""))
        print(text)
    return 0
