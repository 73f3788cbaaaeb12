"""Declared configuration keys, checked once the config is merged and before any data is read.

Each model declares the keys it reads as a ``config_spec`` tuple next to its yaml defaults
(shared pieces live here); :func:`validate` walks the model class's MRO, checks every declared
key, then every :class:`Rule` whose keys all passed, and raises one :class:`ConfigError` that
lists every problem, one line each, with the key, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

__all__ = ["ConfigError", "Key", "Rule", "Int", "Float", "Prob", "Bool", "Choice",
           "collect_spec", "validate", "COMMON_SPEC", "EFFICIENT_SPEC", "TRANSFORMER_SPEC"]


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per error."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid configuration:" + "".join(f"\n  - {p}" for p in self.problems))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Key:
    """One config key: its type and allowed range or choices.

    ``kind`` is ``int``, ``float``, ``bool``, ``str`` or ``dict``. ``low``/``high`` bound
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
                    "dict": "a mapping"}[self.kind]
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
    keys, rules = {}, []
    for cls in reversed(getattr(model_class, "__mro__", ())):
        for item in cls.__dict__.get("config_spec", ()):
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
    Bool("bucket_by_length"),
    Bool("allow_download"),
    Bool("trust_checkpoint"),
)

#: Keys of every recbole_efficient model.
EFFICIENT_SPEC = (
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

