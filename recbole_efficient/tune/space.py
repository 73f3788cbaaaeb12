"""Search spaces: reading them (yaml or RecBole's hyper-parameter files), checking them
against the model's declared keys, and turning them into Ray Tune's."""

import ast
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from recbole.utils.argument_list import dataset_arguments

from recbole_efficient.config import FRAMEWORK_SPEC
from recbole_efficient.property_files import properties_dir, yaml_loader
from recbole_efficient.validation import Key, collect_spec

KINDS = ("choice", "grid", "uniform", "quniform", "loguniform", "randint")
_N_ARGS = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
#: Keys that change the dataset, which a sweep builds once, or the trial's placement.
_FIXED_PER_SWEEP = frozenset(dataset_arguments) | {
    "model", "dataset", "data_path", "train_mode", "eval_args", "repeatable", "gpu_id",
    "checkpoint_dir", "valid_metric", "valid_metric_bigger", "eval_step"}


class SweepError(ValueError):
    """Bad sweep input, found before Ray starts; one line per problem."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid sweep:" + "".join(f"\n  - {p}" for p in self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space: a kind of :data:`KINDS` and its arguments."""

    kind: str
    args: tuple
    where: str = field(default="", compare=False)  # "file:line: text", quoted in errors


# -- search spaces -----------------------------------------------------------------------------
def default_space_file(model):
    """``properties/tune/<Model>.yaml``, the default space of one of our models."""
    return properties_dir() / "tune" / f"{model}.yaml"


def load_space(path):
    """Parse a yaml (``.yaml``/``.yml``) or RecBole hyper-parameter file into ``{name: Dim}``."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"search space file {path} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    return _parse_hyper(path, text)


def _make_dim(kind, values, where, log_exponents=False):
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}.")
    if kind in ("choice", "grid"):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: {kind} needs a non-empty list of values, e.g. [0.1, 0.2].")
        return Dim(kind, tuple(values), where)
    n = _N_ARGS[kind]
    shape = "[low, high, q]" if n == 3 else "[low, high]"
    if (not isinstance(values, (list, tuple)) or len(values) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{where}: {kind} needs {n} numbers {shape}, got {values!r}.")
    low, high = values[0], values[1]
    if log_exponents and kind == "loguniform":
        low, high = math.exp(low), math.exp(high)
    if not low < high:
        raise ValueError(f"{where}: bounds reversed or empty: low {low:g} must be below high {high:g}.")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs bounds above 0, got low {low:g} "
                         "(RecBole hyper files give natural-log exponents instead).")
    if kind == "quniform" and not values[2] > 0:
        raise ValueError(f"{where}: quniform's step q must be above 0, got {values[2]!r}.")
    if kind == "randint" and not all(float(v).is_integer() for v in values):
        raise ValueError(f"{where}: randint needs integer bounds, got {values!r}.")
    return Dim(kind, (low, high, *values[2:]), where)


def _parse_yaml(path, text):
    try:
        data = yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err}).") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected one line per parameter, 'name: {{kind: values}}', "
                         "e.g. 'learning_rate: {loguniform: [1.0e-4, 1.0e-2]}'.")
    lines = text.splitlines()
    space, problems = {}, []
    for name, spec in data.items():
        lineno = next((i for i, line in enumerate(lines, 1)
                       if line.strip().startswith(f"{name}:")), 0)
        where = f"{path}:{lineno}: {lines[lineno - 1].strip()!r}" if lineno else f"{path}: {name}"
        if not (isinstance(spec, dict) and len(spec) == 1):
            problems.append(f"{where}: expected '{name}: {{kind: values}}' with kind one of "
                            f"{', '.join(KINDS)}.")
            continue
        (kind, values), = spec.items()
        try:
            space[str(name)] = _make_dim(kind, values, where)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise SweepError(problems)
    return space


def _parse_hyper(path, text):
    space, problems = {}, []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}: {raw.strip()!r}"
        parts = line.split(maxsplit=2)
        if len(parts) != 3:
            problems.append(f"{where}: expected 'name kind values', e.g. "
                            "'learning_rate loguniform -8,0' or 'hidden_size choice [64,128]'.")
            continue
        name, kind, spec = parts
        if name in space:
            problems.append(f"{where}: {name} is given twice.")
            continue
        try:
            values = ast.literal_eval(spec if kind in ("choice", "grid") else f"[{spec}]")
            space[name] = _make_dim(kind, values, where, log_exponents=True)
        except (ValueError, SyntaxError) as err:
            problems.append(str(err) if isinstance(err, ValueError) and str(err).startswith(str(path))
                            else f"{where}: cannot read the values {spec!r}.")
    if problems:
        raise SweepError(problems)
    if not space:
        raise SweepError(f"{path}: the search space is empty.")
    return space


def _declared_keys(model_class):
    keys, _ = collect_spec(model_class)
    for item in FRAMEWORK_SPEC:
        if isinstance(item, Key):
            keys.setdefault(item.name, item)
    return keys


def _is_int_key(name, config, declared):
    if name in declared:
        return declared[name].kind == "int"
    default = config.final_config_dict.get(name)
    return isinstance(default, int) and not isinstance(default, bool)


def _extremes(dim, integer):
    """The values a dimension can produce that are worth checking against a key's range."""
    low, high = dim.args[0], dim.args[1] if len(dim.args) > 1 else None
    if dim.kind in ("choice", "grid"):
        return list(dim.args)
    if dim.kind == "randint":
        return [int(low), int(high) - 1]
    if dim.kind == "quniform":
        q = dim.args[2]
        top = math.floor(high / q) * q
        return [int(low), int(top)] if integer else [low, top]
    return [low, math.nextafter(high, low)]  # uniform, loguniform: high is never drawn


def check_space(space, config):
    """Every key known to the model and not fixed per sweep, every value in its range."""
    declared = _declared_keys(config.model_class)
    known = set(config.final_config_dict) | set(declared)
    problems = []
    for name, dim in space.items():
        if name in _FIXED_PER_SWEEP:
            problems.append(f"{dim.where}: {name} cannot vary within a sweep (the dataset is built "
                            f"once and trials are placed by Ray); fix it with --{name}=... instead.")
            continue
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{dim.where}: {config['model']} has no setting {name!r}{hint}.")
            continue
        key = declared.get(name)
        if key is None:
            continue
        for value in _extremes(dim, key.kind == "int"):
            why = key.problem(value)
            if why:
                problems.append(f"{dim.where}: {name}={value!r} {why}.")
                break
    if problems:
        raise SweepError(problems)


def to_ray(space, config, grid=False):
    """Ray Tune param space of ``space``; ``grid`` turns every choice into a grid search."""
    from ray import tune

    declared = _declared_keys(config.model_class)
    out = {}
    for name, dim in space.items():
        a = dim.args
        if dim.kind == "grid" or (dim.kind == "choice" and grid):
            out[name] = tune.grid_search(list(a))
        elif dim.kind == "choice":
            out[name] = tune.choice(list(a))
        elif dim.kind == "uniform":
            out[name] = tune.uniform(*a)
        elif dim.kind == "loguniform":
            out[name] = tune.loguniform(*a)
        elif dim.kind == "randint":
            out[name] = tune.randint(int(a[0]), int(a[1]))
        elif _is_int_key(name, config, declared) and all(float(v).is_integer() for v in a):
            out[name] = tune.qrandint(*(int(v) for v in a))  # RecBole files quniform int keys
        else:
            out[name] = tune.quniform(*a)
    return out


