"""SFT throughput and peak memory: tunesmith vs TRL's SFTTrainer + PEFT, side by side.

Run from the repository root (CPU, a few minutes):

    PYTHONPATH=src python bench/sft_vs_trl.py [--steps 6] [--warmup-steps 1] [--model DIR] [--data FILE]
                                              [--method lora|qlora] [--max-length 128] [--lora-dropout 0]

Needs `trl` (pip install "trl==1.16.0", check with --dry-run that it keeps your torch). Both sides train
SmolLM2-135M-Instruct with LoRA r=16, alpha=32, dropout 0 (PEFT's and both tools' default; --lora-dropout) on all
linear layers of the blocks, over an fp32 base (--method lora) or an NF4 double-quantised one (--method qlora,
bitsandbytes, compute in fp32), 8 examples per optimizer step (no accumulation), max length 128 (--max-length;
longer rows truncated), fp32, AdamW lr 2e-4, loss on assistant tokens, on the first steps*8 usable rows of the data
in file order (rows whose reply starts past the max length are skipped: both sides would drop them). Step k trains the same 8 examples on both sides (TRL: sequential sampler;
tunesmith, which always shuffles with its seed: rows laid out so that its order is the file order). Each side runs
in its own fresh subprocess, which reports its peak RSS (ru_maxrss). tokens/s = non-padding tokens of the timed
steps' examples, counted once here with the model's tokenizer and chat template, / wall seconds of the timed steps
(TRL: a TrainerCallback from on_step_begin to on_step_end; tunesmith: `step_s` in its metrics.jsonl). TRL pads each
batch to its longest row (its default, no packing); tunesmith runs with its defaults, which pack each step's 8
examples into one row with no padding (attention per example) and compute a prompt prefix that they share once
(the demo data's 81-token system prompt: `--no-shared-prefix` turns that off), and in extra rows with each of the
--extra flags (default: --no-packing, padding like TRL; bench/run.py asks for --compile and --no-shared-prefix).
Prints a table and writes bench/results/sft_vs_trl-<date>-<host>.json (see --results-dir).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from harness import (
    ROOT,
    add_ratios,
    child_side,
    count_batches,
    default_model_dir,
    emit,
    first_usable,
    peft_lora,
    print_table,
    row,
    run_side,
    side_by_side_parser,
    side_by_side_result,
    step_timer,
    tunesmith_data,
    tunesmith_row,
    tunesmith_variants,
    versions,
    write_jsonl,
    write_result,
)

BATCH, LR = 8, 2e-4
MAX_LEN, METHOD, LORA = 128, "lora", dict(r=16, alpha=32, dropout=0.0)  # set from the flags by configure()
# SmolLM2's stock chat template with TRL's {% generation %} markers around each assistant reply and its
# "<|im_end|>\n" (the span tunesmith trains); it renders the same text as the stock template (checked before use).
SMOL_MARKED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def configure(a: argparse.Namespace) -> None:
    """The settings both sides share, from the flags (the parent passes them on to each child)."""
    global MAX_LEN, METHOD
    MAX_LEN, METHOD, LORA["dropout"] = a.max_length, a.method, a.lora_dropout


def load_trl_model(path: str):
    """The base as TRL + PEFT users load it: fp32, or (qlora) NF4 with double quantisation, computing in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if METHOD == "lora":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=nf4, device_map={"": "cpu"}
    )


def child_trl(a: argparse.Namespace) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train")
    loss_on, note = "assistant", "TRL's own training template"
    if not has_generation_markers(tok.chat_template):
        try:
            get_training_chat_template(tok)
        except ValueError:  # TRL ships no training template for SmolLM2's: use ours if it renders the same
            render = lambda t: [tok.apply_chat_template(r["messages"], tokenize=False, chat_template=t) for r in data]
            if render(SMOL_MARKED_TEMPLATE) == render(tok.chat_template):
                tok.chat_template, note = SMOL_MARKED_TEMPLATE, "stock template + bench's {% generation %} markers"
            else:
                loss_on, note = "all", "no {% generation %} template renders like the stock one: loss on all tokens"
    step_s = []
    cfg = SFTConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        max_grad_norm=1.0,
        max_length=MAX_LEN,
        packing=False,
        padding_free=False,
        assistant_only_loss=loss_on == "assistant",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # TRL defaults both to True
        train_sampling_strategy="sequential",
        shuffle_dataset=False,
        seed=a.seed,
        data_seed=a.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=True,
    )
    peft_cfg = peft_lora(LORA)
    model = load_trl_model(a.model)
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[step_timer(step_s)],
    )
    batch_tokens, _ = count_batches(trainer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    emit(
        dict(
            step_s=step_s,
            batch_tokens=batch_tokens[: a.steps],
            losses=losses,
            loss_on=loss_on,
            loss_mask_note=note,
            rows_after_prep=len(trainer.train_dataset),
            threads=torch.get_num_threads(),
            trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        )
    )


def tunesmith_argv(model, data, steps, seed, out, flags=()) -> list[str]:
    """`tunesmith sft` with the shared settings and tunesmith's defaults for the rest (packing on), plus `flags`."""
    return [
        "sft",
        "--model",
        model,
        "--data",
        data,
        "--method",
        METHOD,
        "--lora-r",
        str(LORA["r"]),
        "--lora-alpha",
        str(LORA["alpha"]),
        "--lora-dropout",
        str(LORA["dropout"]),
        "--target",
        "all-linear",
        "--batch-size",
        str(BATCH),
        "--micro-batch-size",
        str(BATCH),
        "--max-length",
        str(MAX_LEN),
        "--precision",
        "fp32",
        "--lr",
        str(LR),
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--log-every",
        "1",
        "--out",
        out,
        "--overwrite",
        *flags,
    ]


def child_settings() -> list[str]:
    """This script's own settings, for its children (run_side passes the shared ones)."""
    return ["--method", METHOD, "--lora-dropout", str(LORA["dropout"])]


def reply_start(tok, messages: list[dict]) -> int | None:
    """The token where the first assistant reply starts, or None when it starts at or past MAX_LEN (both sides
    drop examples whose trained tokens all lie past the truncation, which would shift every later batch)."""
    i = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if i is None:
        return None
    start = len(
        tok.apply_chat_template(messages[:i], tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
    )
    return start if start < MAX_LEN else None


def main() -> None:
    ap = side_by_side_parser(
        __doc__,
        str(ROOT / "src/tunesmith/demo/data/support_train.jsonl"),
        "--no-packing",
        "comma-separated tunesmith flags, each adding a row that runs tunesmith with it "
        "(default --no-packing: padded like TRL; '' for none)",
    )
    ap.add_argument("--method", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    a = ap.parse_args()
    configure(a)
    if a.child:
        return child_side(a, child_trl, tunesmith_argv)
    assert a.steps > a.warmup_steps >= 0, "--steps must exceed --warmup-steps"
    a.model = a.model or default_model_dir()

    vers = versions()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    n_rows = a.steps * BATCH
    rows, starts, skipped = first_usable(a.data, n_rows, lambda r: reply_start(tok, r["messages"]), "rows")
    ex_ids = [
        tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][:MAX_LEN] for r in rows
    ]
    ex_tokens = [len(ids) for ids in ex_ids]
    step_tokens = [sum(ex_tokens[i * BATCH : (i + 1) * BATCH]) for i in range(a.steps)]
    # the prefixes (s tokens shared by k examples) that tunesmith's default packing computes once per step
    from tunesmith.data.packing import prefix_groups

    shared = [
        [
            [s, len(m)]
            for s, m in prefix_groups(ex_ids[i * BATCH : (i + 1) * BATCH], starts[i * BATCH : (i + 1) * BATCH])
            if len(m) > 1
        ]
        for i in range(a.steps)
    ]
    # what the model FLOPs of MFU need (bench/run.py): each example's length, and the tokens from its first reply
    # on (the trained ones, for a single-turn chat; an upper bound when later user turns follow)
    examples = [dict(tokens=n, trained=n - s) for n, s in zip(ex_tokens, starts)]
    w = a.warmup_steps
    with tempfile.TemporaryDirectory(prefix="sft_vs_trl-") as tmp:
        subset = os.path.join(tmp, "train.jsonl")
        write_jsonl(subset, rows)
        res, wall = run_side(__file__, "trl", a, subset, os.path.join(tmp, "trl"), settings=child_settings())
        notes = [f"TRL loss mask: {res['loss_on']} tokens ({res['loss_mask_note']})"]
        if skipped:
            notes.append(
                f"skipped {skipped} row(s) whose assistant reply starts past token {MAX_LEN} (both sides "
                "would drop them after truncation); trained the next usable rows instead"
            )
        if res["batch_tokens"] != step_tokens or res["rows_after_prep"] != len(rows):
            notes.append(f"TRL trained different tokens per step than the harness counted: {res['batch_tokens']}")
        table = [
            row(
                "trl",
                res["step_s"],
                step_tokens,
                w,
                res["maxrss_kib"],
                child_wall_s=wall,
                **{k: v for k, v in res.items() if k not in ("step_s", "maxrss_kib")},
            )
        ]
        if not a.skip_tunesmith:
            ts_data = tunesmith_data(rows, a.seed, BATCH, tmp, notes)
            for name, flags in tunesmith_variants(a.extra):
                table.append(
                    tunesmith_row(
                        __file__,
                        "sft",
                        name,
                        a,
                        ts_data,
                        tmp,
                        flags,
                        step_tokens,
                        child_settings(),
                        shares_prefixes=not {"--no-shared-prefix", "--no-packing"} & set(flags),
                    )[0]
                )
                if not table[-1]["tokens_match_harness"]:
                    notes.append(
                        f"{name} trained different tokens per step than the harness counted: "
                        f"{table[-1]['tunesmith_reported_tokens']}"
                    )
    add_ratios(table, "tokens_per_s", notes)
    print_table(table, 22, "tokens_per_s")
    for n in notes:
        print("note:", n)
    result = side_by_side_result(
        "sft_vs_trl",
        vers,
        table=table,
        speed="tokens_per_s",
        notes=notes,
        settings=dict(
            model=a.model,
            data=a.data,
            rows=len(rows),
            steps=a.steps,
            warmup_steps=w,
            seed=a.seed,
            batch=BATCH,
            grad_accum=1,
            max_length=MAX_LEN,
            precision="fp32",
            device="cpu",
            lr=LR,
            method=METHOD,
            optimizer="AdamW",
            lora=dict(LORA, target_modules="all-linear"),
            packing=dict(trl=False, tunesmith=True),
            trl_extra=dict(
                gradient_checkpointing=False,
                optim="adamw_torch",
                max_grad_norm=1.0,
                lr_scheduler="cosine",
                sampler="sequential",
            ),
            tunesmith_argv=tunesmith_argv(a.model, "DATA", a.steps, a.seed, "OUT"),
        ),
        harness_step_tokens=step_tokens,
        examples=examples,
        shared_prefixes=shared,
        rows_skipped=skipped,
    )
    write_result(result, a.results_dir)


if __name__ == "__main__":
    main()
