"""OpenAI graders as rewards: the `grader` of a reinforcement fine-tuning job, and `--reward grader:PATH`.

A grader is OpenAI's JSON object, field for field (openai-python's types/graders/*). `build_grader(obj)`
checks the whole object when it is built (a bad one is a ConfigError naming the field path, e.g.
`grader.graders.a.operation: 'foo' is not one of eq, ne, like, ilike`) and returns a `Grader`, which is a
reward: `grader(prompt, completion, row) -> float`. Nothing runs and nothing loads until the first call.

Templates. `input` and `reference` strings may hold {{ VARIABLE }}; `item.a.b`, `item.list.0` and
`item.list[0]` reach into nested values:
  {{ sample.output_text }}        the completion
  {{ sample.output_json }}        the completion parsed as JSON (json.loads of the stripped text)
  {{ sample.output_json.FIELD }}  one field of it; "" when the completion is not JSON or lacks the field
                                  (the model's shortcoming is scored, not an error)
  {{ item.FIELD }}                the data row's field (in RFT data, the fields beside `messages`); a row
                                  without it is an error naming the row, and the top-level fields a grader
                                  reads are checked in every row before training starts
A string is substituted as it is, any other value as JSON (`3`, `true`, `{"a": 1}`).

Types and scores (a, b: the rendered input and reference):
  string_check     operation eq: a == b; ne: a != b; like: b is a substring of a; ilike: the same ignoring
                   case (b.lower() in a.lower()). 1.0 if it holds, else 0.0.
  text_similarity  evaluation_metric, a score in [0, 1]:
    fuzzy_match    rapidfuzz.fuzz.ratio(a, b) / 100 = 1 - (insertions + deletions) / (len(a) + len(b)), in
                   characters (the normalised Indel similarity; OpenAI names rapidfuzz for this metric)
    bleu           nltk sentence_bleu: BP · exp(¼ Σ_{n=1..4} ln p_n), p_n the clipped n-gram precision of a
                   against b, BP = min(1, exp(1 - len(b) / len(a))); the k-th p_n with no match is smoothed
                   to 1 / (2^k · n-grams of that order in a, at least 1) (NIST, nltk method3, as sacrebleu's
                   default), so short replies still score
    gleu           nltk sentence_gleu: min(precision, recall) of all 1- to 4-grams of a against b
    meteor         nltk single_meteor_score; it needs NLTK's WordNet data (`python -m nltk.downloader
                   wordnet`), checked when the grader is built
    rouge_1 .. 5   rouge-score's F1 of n-gram overlap: 2PR / (P + R), P = shared n-grams / n-grams of a,
                   R = shared n-grams / n-grams of b (counts clipped)
    rouge_l        rouge-score's F1 of the longest common subsequence: P = LCS / len(a), R = LCS / len(b)
    cosine         refused: it compares embeddings from an embedding model (OpenAI offers it to evals only)
                   bleu, gleu and meteor read nltk's wordpunct tokens (\\w+ and runs of punctuation); rouge
                   reads lowercased runs of letters and digits in any script (rouge-score's own tokenizer
                   keeps only a-z0-9, which scores every non-English text 0). Two empty texts score 1.0,
                   one empty text 0.0.
  python           `source` defines grade(sample, item) -> float, with sample = {"output_text": completion,
                   "output_json": the completion parsed as JSON, or None} and item = the data row. It runs in
                   a Python process of its own, never in the training process, but not in a sandbox
                   (python_grader.py: one process per grader, kept for every call). Raising, returning
                   anything but a finite number, or running past the timeout (10 s; `python_timeout_s`, or
                   the environment variable TUNESMITH_GRADER_TIMEOUT_S) is an error naming the grader.
  score_model      `model` names a tunesmith reward model (a `tunesmith reward` run directory or its
                   reward_model/): the score is its scalar r = w · h_last + b for the row's prompt messages
                   followed by the completion as the assistant's reply (the model loads on first use);
                   `range` [lo, hi], when given, clamps it to min(max(r, lo), hi). OpenAI's judge prompt
                   (`input`) and `sampling_params` are accepted and not used: a reward model reads the
                   conversation itself.
  multi            `graders` {name: grader} and `calculate_output`, an expression over the names: numbers,
                   + - * / ** (power), unary minus, parentheses and min, max, abs, floor, ceil, sqrt, exp,
                   log (natural), e.g. "0.5 * a + 0.5 * b". It is parsed with `ast` and evaluated node by
                   node, never with eval; only the graders it names are run. A multi holds no multi (as
                   OpenAI's). `graders` may also be one grader object (as openai-python's types have it),
                   known by its name.
`name` is optional here (it names the grader in errors; default: its key in a multi's graders, else its
type). Accepted and not used: `image_tag` (python), `input` and `sampling_params` (score_model),
`pass_threshold` (text_similarity, for evals). Any other field is a ConfigError, and so is `label_model`,
OpenAI's label-picking LLM judge.
"""

from __future__ import annotations

import ast
import difflib
import json
import keyword
import math
import numbers
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.rollout.python_grader import GraderError, PythonWorker, check_source, resolve_timeout_s

TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


@dataclass
class Call:
    """What one grader call sees."""

    prompt: list[dict]  # the prompt messages
    sample: dict[str, Any]  # {"output_text", "output_json"}
    item: dict[str, Any]  # the data row


ScoreFn = Callable[[Call], float]


@dataclass
class Built:
    score: ScoreFn
    fields: set[str]  # top-level item fields the templates read


@dataclass
class _Context:
    """What building shares down the tree: the python timeout, and every python grader's worker."""

    python_timeout_s: float
    workers: list[PythonWorker]


class Grader:
    """A built grader, called as a reward: grader(prompt, completion, row) -> float."""

    def __init__(self, name: str, built: Built, workers: list[PythonWorker]):
        self.name = name
        self._score = built.score
        self.required_fields = frozenset(built.fields)  # checked in every row before training (rewards.py)
        self._workers = workers

    def __call__(self, prompt: list[dict], completion: str, row: dict) -> float:
        return self._score(Call(prompt, sample_namespace(completion), row))

    @property
    def runs_python(self) -> bool:
        """Whether it holds a python grader (itself, or inside a multi): code that runs on this machine."""
        return bool(self._workers)

    def close(self) -> None:
        """Stop the python graders' processes (they also stop when this object is collected, or at exit)."""
        for worker in self._workers:
            worker.stop()


def sample_namespace(completion: str) -> dict[str, Any]:
    try:
        output_json = json.loads(completion.strip())
    except (ValueError, RecursionError):
        output_json = None
    return {"output_text": completion, "output_json": output_json}


# ---------------------------------------------------------------- checking objects


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "a string": (str,),
    "a number": (int, float),
    "an array": (list,),
    "an object": (dict,),
}


def _fields(obj: Any, path: str, kind: str, required: dict[str, str], optional: dict[str, str]) -> None:
    """Refuse a non-object, an unknown field, a missing required field and a field of the wrong JSON type
    (the dicts map each field to its type's JSON_TYPES key); null counts as absent for optional fields."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a grader must be an object, got {_type_name(obj)}")
    known = {"type": "a string", "name": "a string", **required, **optional}
    for key in obj:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}.{key}: unknown field for a {kind} grader{hint}; fields: {', '.join(known)}")
    for key in required:
        if key not in obj:
            raise ConfigError(f"{path}.{key}: missing (a {kind} grader needs {', '.join(required)})")
    for key, expected in known.items():
        value = obj.get(key)
        if value is None and key not in required:
            continue
        if not isinstance(value, JSON_TYPES[expected]) or isinstance(value, bool):
            raise ConfigError(f"{path}.{key}: must be {expected}, got {_type_name(value)}")


def _one_of(obj: dict, key: str, path: str, allowed: tuple[str, ...]) -> str:
    value = obj[key]
    if value not in allowed:
        raise ConfigError(f"{path}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------- templates

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_VARIABLE = re.compile(r"(sample|item)((?:\.[^.\s\[\]{}]+|\[\d+\])*)")


def _lookup(value: Any, keys: list[str]) -> tuple[bool, Any]:
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return True, value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def template(text: str, path: str) -> tuple[Callable[[Call], str], set[str]]:
    """A renderer for one templated string, and the top-level item fields it reads. Unknown namespaces and
    sample variables are refused here."""
    parts: list[str | tuple[str, list[str], str]] = []  # literal text, or (namespace, keys, as written)
    fields: set[str] = set()
    end = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(text[end : match.start()])
        end = match.end()
        written = match.group(1).strip()
        variable = _VARIABLE.fullmatch(written)
        if variable is None:
            raise ConfigError(
                f"{path}: '{{{{ {written} }}}}' is not a variable: use sample.output_text, sample.output_json[.FIELD] "
                "or item.FIELD"
            )
        namespace = variable.group(1)
        keys = [k for k in re.split(r"[.\[\]]+", variable.group(2)) if k]
        if namespace == "sample" and (
            not keys or keys[0] not in ("output_text", "output_json") or keys[0] == "output_text" and keys[1:]
        ):
            raise ConfigError(
                f"{path}: '{{{{ {written} }}}}': the sample has output_text and output_json (and its fields)"
            )
        if namespace == "item" and keys:
            fields.add(keys[0])
        parts.append((namespace, keys, written))
    parts.append(text[end:])

    def render(call: Call) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            namespace, keys, written = part
            found, value = _lookup(call.sample if namespace == "sample" else call.item, keys)
            if namespace == "item" and not found:
                raise GraderError(f"{{{{ {written} }}}}: the row has no such field")
            out.append("" if not found or value is None else _as_text(value))
        return "".join(out)

    return render, fields


def _input_and_reference(obj: dict, path: str) -> tuple[Callable[[Call], str], Callable[[Call], str], set[str]]:
    render_input, input_fields = template(obj["input"], f"{path}.input")
    render_reference, reference_fields = template(obj["reference"], f"{path}.reference")
    return render_input, render_reference, input_fields | reference_fields


# ---------------------------------------------------------------- string_check and text_similarity

STRING_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.lower() in a.lower(),
}


def string_check(obj: dict, path: str, name: str, ctx: _Context) -> Built:
    """1.0 if `operation` holds between the rendered input and reference, else 0.0."""
    _fields(obj, path, "string_check", {"input": "a string", "reference": "a string", "operation": "a string"}, {})
    check = STRING_CHECKS[_one_of(obj, "operation", path, OPERATIONS)]
    render_input, render_reference, fields = _input_and_reference(obj, path)
    return Built(lambda call: 1.0 if check(render_input(call), render_reference(call)) else 0.0, fields)


def _word_tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize  # heavy: only when a metric that reads tokens is built

    return wordpunct_tokenize(text)


class _RougeWords:
    """rouge-score's tokenizer interface: lowercased runs of letters and digits, in any script."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def similarity_metric(metric: str, path: str) -> Callable[[str, str], float]:
    """(input, reference) -> [0, 1] for one evaluation_metric; the library is imported (and for meteor its
    data found) here, so a missing one is a ConfigError when the grader is built."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return lambda a, b: fuzz.ratio(a, b) / 100.0
    if metric == "bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        smoothing = SmoothingFunction().method3
        return lambda a, b: sentence_bleu([_word_tokens(b)], _word_tokens(a), smoothing_function=smoothing)
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return lambda a, b: sentence_gleu([_word_tokens(b)], _word_tokens(a))
    if metric == "meteor":
        from nltk.corpus import wordnet
        from nltk.translate.meteor_score import single_meteor_score

        try:
            wordnet.ensure_loaded()
        except LookupError:
            raise ConfigError(
                f"{path}: meteor needs NLTK's WordNet data, which is not installed "
                "(python -m nltk.downloader wordnet); or use another evaluation_metric"
            ) from None
        return lambda a, b: single_meteor_score(_word_tokens(b), _word_tokens(a))
    from rouge_score.rouge_scorer import RougeScorer

    kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
    scorer = RougeScorer([kind], tokenizer=_RougeWords())
    return lambda a, b: scorer.score(target=b, prediction=a)[kind].fmeasure


def text_similarity(obj: dict, path: str, name: str, ctx: _Context) -> Built:
    """The similarity of the rendered input to the reference by `evaluation_metric`, in [0, 1]."""
    _fields(
        obj,
        path,
        "text_similarity",
        {"input": "a string", "reference": "a string", "evaluation_metric": "a string"},
        {"pass_threshold": "a number"},
    )
    if obj["evaluation_metric"] == "cosine":
        raise ConfigError(
            f"{path}.evaluation_metric: cosine compares embeddings from an embedding model, which tunesmith does not "
            f"run (OpenAI offers it to evals only); use one of {', '.join(METRICS)}"
        )
    metric = _one_of(obj, "evaluation_metric", path, METRICS)
    measure = similarity_metric(metric, f"{path}.evaluation_metric")
    render_input, render_reference, fields = _input_and_reference(obj, path)

    def score(call: Call) -> float:
        a, b = render_input(call), render_reference(call)
        if not a.strip() or not b.strip():  # the libraries divide by these lengths
            return 1.0 if not a.strip() and not b.strip() else 0.0
        return float(measure(a, b))

    return Built(score, fields)


# ---------------------------------------------------------------- python


def python_grader(obj: dict, path: str, name: str, ctx: _Context) -> Built:
    """grade(sample, item) from `source`, run in a process of its own."""
    _fields(obj, path, "python", {"source": "a string"}, {"image_tag": "a string"})
    check_source(obj["source"], path, name)
    worker = PythonWorker(name, obj["source"], ctx.python_timeout_s)
    ctx.workers.append(worker)
    return Built(lambda call: worker.grade(call.sample, call.item), set())


# ---------------------------------------------------------------- score_model


class RewardModelScore:
    """A `tunesmith reward` model's scalar for (prompt, completion), loaded on first use."""

    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None

    def __call__(self, prompt: list[dict], completion: str) -> float:
        from tunesmith.data.formats import Conversation  # heavy: torch and the model only when scoring
        from tunesmith.data.templates import tokenize_conversations
        from tunesmith.eval.reward import score_examples
        from tunesmith.models.reward import load_reward_model

        with self._lock:
            if self._loaded is None:
                self._loaded = load_reward_model(self.directory)
            model, head, tokenizer = self._loaded
            messages = [{"role": m["role"], "content": m["content"], "weight": 0} for m in prompt]
            messages.append({"role": "assistant", "content": completion, "weight": 1})
            (example,) = tokenize_conversations(
                tokenizer, [Conversation(messages, f"score_model grader '{self.name}'")]
            )
            return score_examples(model, head, [example], tokenizer.pad_token_id)[0]


def score_model(obj: dict, path: str, name: str, ctx: _Context) -> Built:
    """The reward model's scalar, clamped to `range` when given."""
    from tunesmith.errors import ModelError
    from tunesmith.models.reward import find_reward_model

    optional = {"input": "an array", "range": "an array", "sampling_params": "an object"}
    _fields(obj, path, "score_model", {"model": "a string"}, optional)
    try:
        directory, _ = find_reward_model(obj["model"])
    except (ModelError, OSError, ValueError) as e:
        raise ConfigError(f"{path}.model: {e}") from None
    bounds = obj.get("range")
    if bounds is not None:
        if len(bounds) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds):
            raise ConfigError(f"{path}.range: must be two numbers [lo, hi], got {json.dumps(bounds)}")
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"{path}.range: lo must be below hi, got {json.dumps(bounds)}")
    reward_model = RewardModelScore(directory, name)

    def score(call: Call) -> float:
        r = reward_model(call.prompt, call.sample["output_text"])
        return min(max(r, bounds[0]), bounds[1]) if bounds is not None else r

    return Built(score, set())


# ---------------------------------------------------------------- multi

# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "min": (min, 2, None),
    "max": (max, 2, None),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 1),
}
BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
UNARY: dict[type, Callable[[float], float]] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}
Expression = Callable[[Callable[[str], float]], float]  # (value of a grader name) -> result


def expression(text: str, names: set[str], path: str) -> tuple[Expression, set[str]]:
    """calculate_output as a function of the graders' scores, and the names it reads; anything but
    numbers, the names, + - * / **, unary +/-, and calls of FUNCTIONS is a ConfigError."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"{path}: {text!r} is not an expression ({e.msg})") from None
    used: set[str] = set()

    def build(node: ast.AST) -> Expression:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda score: value
        if isinstance(node, ast.Name):
            if node.id not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(f"{path}: '{node.id}' is not one of the graders ({known})")
            used.add(node.id)
            key = node.id
            return lambda score: score(key)
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            op, left, right = BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda score: op(left(score), right(score))
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            unary, operand = UNARY[type(node.op)], build(node.operand)
            return lambda score: unary(operand(score))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            function, fewest, most = FUNCTIONS[node.func.id]
            if node.keywords or len(node.args) < fewest or (most is not None and len(node.args) > most):
                wanted = f"{fewest} or more" if most is None else str(fewest)
                raise ConfigError(f"{path}: {node.func.id}() takes {wanted} numbers, without keywords")
            args = [build(a) for a in node.args]
            return lambda score: float(function(*(a(score) for a in args)))
        shown = ast.get_source_segment(text.strip(), node) or type(node).__name__
        raise ConfigError(
            f"{path}: {shown!r} is not allowed; use numbers, grader names, + - * / **, parentheses and "
            f"{', '.join(FUNCTIONS)}"
        )

    return build(tree), used


def multi(obj: dict, path: str, name: str, ctx: _Context) -> Built:
    """calculate_output over the named graders' scores."""
    _fields(obj, path, "multi", {"graders": "an object", "calculate_output": "a string"}, {})
    graders = obj["graders"]
    if isinstance(graders.get("type"), str):  # one grader object, as openai-python's types describe it
        single = graders.get("name")
        if not isinstance(single, str):
            raise ConfigError(f"{path}.graders.name: a single grader needs a name for calculate_output to use")
        graders = {single: graders}
        paths = {single: f"{path}.graders"}
    else:
        paths = {key: f"{path}.graders.{key}" for key in graders}
    if not graders:
        raise ConfigError(f"{path}.graders: empty; give at least one {{name: grader}}")
    for key in graders:
        if not key.isidentifier() or keyword.iskeyword(key) or key in FUNCTIONS:
            raise ConfigError(
                f"{path}.graders.{key}: a grader's key must be a name calculate_output can use (letters, digits, _, "
                f"not starting with a digit, none of {', '.join(FUNCTIONS)})"
            )
        if isinstance(graders[key], dict) and graders[key].get("type") == "multi":
            raise ConfigError(f"{paths[key]}.type: a multi grader cannot hold another multi")
    built = {key: _build(value, paths[key], key, ctx) for key, value in graders.items()}
    calculate, used = expression(obj["calculate_output"], set(built), f"{path}.calculate_output")
    fields = set().union(*(built[key].fields for key in used))

    def score(call: Call) -> float:
        scores: dict[str, float] = {}

        def value(key: str) -> float:
            if key not in scores:
                scores[key] = _finite(built[key].score(call), f"grader '{key}'")
            return scores[key]

        try:
            result = calculate(value)
        except (ArithmeticError, ValueError) as e:  # 1 / 0, sqrt(-1), log(0), an overflowing power
            raise GraderError(f"multi grader '{name}': calculate_output failed: {type(e).__name__}: {e}") from None
        return _finite(result, f"multi grader '{name}': calculate_output")

    return Built(score, fields)


def _finite(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise GraderError(f"{what} gave {value!r}, not a finite number")
    return float(value)


# ---------------------------------------------------------------- building

BUILDERS: dict[str, Callable[[dict, str, str, _Context], Built]] = {
    "string_check": string_check,
    "text_similarity": text_similarity,
    "python": python_grader,
    "score_model": score_model,
    "multi": multi,
}


def _build(obj: Any, path: str, default_name: str, ctx: _Context) -> Built:
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a grader must be an object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind is None:
        raise ConfigError(f"{path}.type: missing; one of {', '.join(TYPES)}")
    if kind == "label_model":
        raise ConfigError(
            f"{path}.type: label_model is an LLM judge, which tunesmith does not run; use score_model with a "
            "`tunesmith reward` model, or python"
        )
    if kind not in BUILDERS:
        raise ConfigError(f"{path}.type: {kind!r} is not one of {', '.join(TYPES)}")
    name = obj.get("name")
    name = name if isinstance(name, str) and name else default_name
    return BUILDERS[kind](obj, path, name, ctx)


def build_grader(obj: Any, path: str = "grader", python_timeout_s: float | None = None) -> Grader:
    """Check an OpenAI grader object whole and return it as a reward; `path` prefixes the field paths in
    errors. Nothing is started or loaded until the first call."""
    ctx = _Context(resolve_timeout_s(python_timeout_s), [])
    kind = obj.get("type") if isinstance(obj, dict) else None
    built = _build(obj, path, str(kind or "grader"), ctx)
    name = obj.get("name") if isinstance(obj.get("name"), str) and obj.get("name") else str(kind)
    return Grader(name, built, ctx.workers)


def load_grader_file(path: str | Path, python_timeout_s: float | None = None) -> Grader:
    """The grader in a JSON file holding one grader object; errors name the file."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the grader: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: the grader is not valid JSON: {e}") from None
    try:
        return build_grader(obj, python_timeout_s=python_timeout_s)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
