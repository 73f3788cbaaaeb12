"""Declared configuration keys, checked once the config is merged and before any data is read.

Each model declares the keys it reads as a ``config_spec`` tuple next to its yaml defaults
(shared pieces live here); :func:`validate` walks the model class's MRO, checks every declared
key, then every :class:`Rule` whose keys all passed, and raises one :class:`ConfigError` that
lists every problem, one line each, with the key, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from typing import Callable

from recbole_efficient.data.catalog import mirror_list

__all__ = ["ConfigError", "Key", "Rule", "Int", "Float", "Prob", "Bool", "Choice",
           "collect_spec", "validate", "result_keys", "spec_keys", "likely_typos", "COMMON_SPEC",
           "EFFICIENT_SPEC",
           "TRANSFORMER_SPEC", "BASELINE_SPECS"]


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per error."""

    def __init__(self, problems):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(f"invalid configuration: {self.problems[0]}")
        else:
            super().__init__("invalid configuration:"
                             + "".join(f"\n  - {p}" for p in self.problems))

    def __reduce__(self):  # pickled across processes (Ray trials) with its problems intact
        return type(self), (self.problems,)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Key:
    """One config key: its type and allowed range or choices.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``list`` or ``dict``. ``low``/``high`` bound
    numbers (``*_open`` excludes the bound), ``choices`` lists allowed strings (compared
    case-insensitively when ``nocase``), ``none_ok`` admits ``None``, ``example`` is a value
    shown in the fix when the model has no yaml default to suggest.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nocase: bool = False
    none_ok: bool = False
    example: object = None

    def allowed(self):
        if self.kind == "bool":
            text = "True or False"
        elif self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            noun = {"int": "an integer", "float": "a number", "str": "a string",
                    "list": "a list", "dict": "a mapping"}[self.kind]
            lo = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
            if lo and hi and self.kind == "float":
                text = (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                        f"{')' if self.high_open else ']'}")
            else:
                text = " ".join(x for x in (noun, lo and (lo + (" and " + hi if hi else "")) or hi)
                                if x)
        return text + (" (or None)" if self.none_ok else "")

    def problem(self, value):
        """``None`` when ``value`` is allowed, else what is wrong (without the fix)."""
        if value is None:
            return None if self.none_ok else "must be set"
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            ok = _is_int(value)
        elif self.kind == "float":
            ok = _is_real(value)
        elif self.kind == "str":
            ok = isinstance(value, str)
        elif self.kind == "list":
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, dict)
        if ok and self.choices:
            norm = (lambda v: str(v).lower()) if self.nocase else (lambda v: v)
            ok = norm(value) in {norm(c) for c in self.choices}
        if ok and (self.low is not None or self.high is not None):
            if self.low is not None:
                ok = value > self.low if self.low_open else value >= self.low
            if ok and self.high is not None:
                ok = value < self.high if self.high_open else value <= self.high
        return None if ok else f"must be {self.allowed()}"


def Int(name, low=None, high=None, **kw):
    return Key(name, "int", low=low, high=high, **kw)


def Float(name, low=None, high=None, **kw):
    return Key(name, "float", low=low, high=high, **kw)


def Prob(name, **kw):
    """A probability such as a dropout rate: [0, 1)."""
    return Key(name, "float", low=0.0, high=1.0, high_open=True, **kw)


def Bool(name, **kw):
    return Key(name, "bool", **kw)


def Choice(name, choices, **kw):
    return Key(name, "str", choices=tuple(choices), **kw)


@dataclass(frozen=True)
class Rule:
    """A constraint across keys, checked only when each of ``keys`` passed its own check.

    ``check(cfg, model_class) -> bool``; ``message`` is formatted with the config values
    (``{hidden_size}``), or is a callable ``(cfg, model_class) -> str``, and says how to fix it.
    """

    keys: tuple
    check: Callable
    message: str


def collect_spec(model_class):
    """Every ``config_spec`` entry along ``model_class``'s MRO, most derived last (a later
    :class:`Key` of the same name replaces an earlier one)."""
    specs = [cls.__dict__.get("config_spec", ()) for cls in reversed(getattr(model_class, "__mro__", ()))]
    # RecBole's own models declare nothing; their keys are declared in BASELINE_SPECS.
    if getattr(model_class, "__module__", "").startswith("recbole.model."):
        specs.append(BASELINE_SPECS.get(model_class.__name__, ()))
    keys, rules = {}, []
    for item in (item for spec in specs for item in spec):
        if isinstance(item, Key):
            keys[item.name] = item
        else:
            rules.append(item)
    return keys, rules


def _fix(key, defaults):
    if key.name in defaults and defaults[key.name] is not None \
            and key.problem(defaults[key.name]) is None:
        return f"--{key.name}={defaults[key.name]!r} (the default)"
    if key.example is not None:
        return f"e.g. --{key.name}={key.example!r}"
    if key.choices:
        return f"e.g. --{key.name}={key.choices[0]}"
    return f"set --{key.name} accordingly"


def validate(cfg, model_class, extra_spec=(), defaults=None):
    """Check ``cfg`` (a dict-like config) against ``model_class``'s declared keys.

    Keys absent from ``cfg`` are not checked (the model falls back on its yaml default).
    ``defaults`` (key -> default value) feeds the suggested fix. Raises :class:`ConfigError`
    with every problem found.
    """
    defaults = defaults or {}
    keys, rules = collect_spec(model_class)
    for item in extra_spec:
        if isinstance(item, Key):
            keys.setdefault(item.name, item)
        else:
            rules.append(item)
    problems, bad = [], set()
    for key in keys.values():
        if key.name not in cfg:
            continue
        value = cfg[key.name]
        why = key.problem(value)
        if why:
            bad.add(key.name)
            problems.append(f"{key.name}={value!r} {why}; use {_fix(key, defaults)}.")
    for rule in rules:
        if any(k in bad or k not in cfg for k in rule.keys):
            continue
        if not rule.check(cfg, model_class):
            msg = rule.message
            problems.append(msg(cfg, model_class) if callable(msg)
                            else msg.format(**{k: cfg[k] for k in rule.keys}))
    if problems:
        raise ConfigError(problems)


def spec_keys(spec):
    """Names of the keys a spec (or a model class's collected spec) mentions."""
    names = set()
    for item in spec:
        names.update([item.name] if isinstance(item, Key) else item.keys)
    return names


def likely_typos(given, known):
    """``(key, known key it probably meant)`` for each unknown key of ``given`` that is close to
    a known one (same name in another case, or a near spelling)."""
    by_lower = {}
    for name in sorted(known):
        by_lower.setdefault(name.lower(), name)
    found = []
    for key in given:
        if key in known:
            continue
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.8)
        if close:
            found.append((key, by_lower[close[0]]))
    return found


def _mirrors_problem(value):
    try:
        mirror_list(value)
    except Exception:  # noqa: BLE001 - yaml or type errors alike: the value is not a list
        return (f"dataset_mirrors={value!r} must be URL prefixes or folders: one, or a list, "
                "e.g. --dataset_mirrors=https://mirror.example.org/movielens or "
                "--dataset_mirrors=\"['https://mirror.example.org/movielens', '/data/archives']\".")
    return None


# -- shared declarations ------------------------------------------------------------------
#: RecBole keys every model reads (baselines included).
COMMON_SPEC = (
    Int("epochs", 1),
    Int("train_batch_size", 1),
    Int("eval_batch_size", 1),
    Float("learning_rate", 0, low_open=True, example=0.001),
    Float("weight_decay", 0, none_ok=True),
    Choice("learner", ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"), nocase=True),
    Int("MAX_ITEM_LIST_LENGTH", 1, example=50),
    Int("stopping_step", 0),
    Int("eval_step", 0),  # 0: no validation (RecBole saves every epoch)
    Float("train_time_budget", 0, low_open=True, none_ok=True, example=300),
    Bool("exclude_history"),
    Choice("same_time_order", ("file", "item_id")),
    Bool("bucket_by_length"),
    Bool("allow_download"),
    Rule(("dataset_mirrors",), lambda c, m: _mirrors_problem(c["dataset_mirrors"]) is None,
         lambda c, m: _mirrors_problem(c["dataset_mirrors"])),
    Bool("trust_checkpoint"),
    Int("seed", 0),
    Bool("reproducibility"),
    Bool("show_progress"),
    Bool("save_dataset"),
    Key("data_path", "str"),
    Key("checkpoint_dir", "str"),
    Key("clip_grad_norm", "dict", none_ok=True, example={"max_norm": 5.0}),
    Key("eval_args", "dict"),
    Key("train_neg_sample_args", "dict", none_ok=True),
    Key("valid_metric", "str", example="NDCG@10"),
    Int("metric_decimal_place", 0),
    Int("worker", 0),
    # Atomic files (read by recbole_efficient.data before RecBole loads them).
    *(Key(name, "str", none_ok=True) for name in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD")),
    *(Key(name, "str") for name in ("LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX",
                                    "field_separator", "seq_separator")),
    Key("encoding", "str", none_ok=True),
    Key("load_col", "dict", none_ok=True),
    Key("benchmark_filename", "list", none_ok=True, example=["train", "valid", "test"]),
    Choice("rm_dup_inter", ("first", "last"), none_ok=True),
    Bool("normalize_all", none_ok=True),
    Key("normalize_field", "list", none_ok=True),
    Key("discretization", "dict", none_ok=True),
    Rule(("metrics",), lambda c, m: _metric_problem(c["metrics"]) is None,
         lambda c, m: _metric_problem(c["metrics"])),
    Rule(("topk",), lambda c, m: _topk(c["topk"]) is not None,
         "topk={topk!r} must be a positive integer or a list of them; e.g. --topk=[10,20]."),
    Rule(("valid_metric", "metrics", "topk"),
         # An invalid metrics/topk is reported on its own.
         lambda c, m: not result_keys(c) or c["valid_metric"].lower() in result_keys(c),
         lambda c, m: (f"valid_metric={c['valid_metric']!r} is not among the computed metrics "
                       f"({', '.join(sorted(result_keys(c)))}); pick one of them, or add it "
                       "with --metrics / --topk.")),
)


def _metric_names(metrics):
    return [metrics] if isinstance(metrics, str) else metrics


def _metric_problem(metrics):
    """What is wrong with RecBole's ``metrics`` value, or ``None``."""
    from recbole.evaluator.register import metric_types

    names = _metric_names(metrics)
    if not isinstance(names, (list, tuple)) or not names \
            or not all(isinstance(n, str) for n in names):
        return f"metrics={metrics!r} must be a metric name or a list of them; e.g. --metrics=[NDCG,Hit]."
    unknown = [n for n in names if n.lower() not in metric_types]
    if unknown:
        return (f"metrics={metrics!r}: unknown metric {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(sorted(metric_types))} (case-insensitive).")
    if len({metric_types[n.lower()] for n in names}) > 1:
        return (f"metrics={metrics!r} mixes ranking and value metrics, which RecBole cannot "
                "compute together; keep one kind.")
    return None


def _topk(topk):
    ks = [topk] if _is_int(topk) else topk
    ok = isinstance(ks, (list, tuple)) and ks and all(_is_int(k) and k >= 1 for k in ks)
    return list(ks) if ok else None


def result_keys(cfg):
    """Lower-case names of the results RecBole's evaluator reports for ``cfg``'s ``metrics``
    and ``topk`` (``ndcg@10``, ``auc``), in its order; empty when those values are invalid."""
    from recbole.evaluator.register import metric_information

    if _metric_problem(cfg["metrics"]) or _topk(cfg["topk"]) is None:
        return []
    keys = []
    for name in (n.lower() for n in _metric_names(cfg["metrics"])):
        per_k = any(need in ("rec.items", "rec.topk") for need in metric_information[name])
        keys += [f"{name}@{k}" for k in _topk(cfg["topk"])] if per_k else [name]
    return list(dict.fromkeys(keys))

#: Keys of every recbole_efficient model.
EFFICIENT_SPEC = (
    Rule(("compile",), lambda c, m: any(c["compile"] is v for v in (True, False))
         or c["compile"] == "auto",
         "compile={compile!r} must be True, False or auto (on for CUDA, off on the CPU); "
         "e.g. --compile=auto."),
    Int("hidden_size", 1),
    Int("n_layers", 1),
    Prob("hidden_dropout_prob"),
    Float("layer_norm_eps", 0, low_open=True),
    Float("initializer_range", 0, low_open=True),
    Choice("loss_type", ("CE", "BPR")),
)

#: Multi-head attention blocks.
TRANSFORMER_SPEC = (
    Int("n_heads", 1),
    Int("inner_size", 1),
    Prob("attn_dropout_prob"),
    Choice("hidden_act", ("gelu", "relu", "swish", "tanh", "sigmoid")),
    Rule(("hidden_size", "n_heads"), lambda c, m: c["hidden_size"] % c["n_heads"] == 0,
         "hidden_size={hidden_size} is not divisible by n_heads={n_heads}: each head gets "
         "hidden_size / n_heads features; choose n_heads among the divisors of hidden_size."),
)


#: RecBole's sequential baselines the README names, with the keys their code reads.
BASELINE_SPECS = {
    "SASRec": EFFICIENT_SPEC + TRANSFORMER_SPEC,
    "BERT4Rec": EFFICIENT_SPEC + TRANSFORMER_SPEC + (Prob("mask_ratio"), Prob("ft_ratio")),
    "LightSANs": EFFICIENT_SPEC + TRANSFORMER_SPEC + (Int("k_interests", 1),),
    "GRU4Rec": (Int("embedding_size", 1), Int("hidden_size", 1), Int("num_layers", 1),
                Prob("dropout_prob"), Choice("loss_type", ("CE", "BPR"))),
}
