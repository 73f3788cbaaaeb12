"""The yaml property files (ours and RecBole's) and RecBole's readers of yaml and of
``--key=value`` values.

Every other module reads settings files through here, so it imports nothing of the project.
RecBole is imported on first use only: the command line's ``--help`` stays quick.
"""

from pathlib import Path

import yaml

__all__ = ["properties_dir", "recbole_properties_dir", "yaml_loader", "read_yaml", "merged_yaml",
           "model_config_files", "model_defaults", "parse_values"]


def properties_dir() -> Path:
    """``properties/`` of a source checkout, else the copy packaged inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "properties", here / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recbole_efficient properties/ not found next to {here}")


def recbole_properties_dir() -> Path:
    """RecBole's own ``properties/`` (its defaults, model and dataset yaml files)."""
    import recbole

    return Path(recbole.__file__).resolve().parent / "properties"


def yaml_loader():
    """RecBole's yaml loader: it also reads floats such as ``1e-12``, which plain YAML 1.1
    leaves as strings."""
    from recbole.config import Config as RecBoleConfig

    return RecBoleConfig._build_yaml_loader(None)


def read_yaml(path):
    """The mapping in yaml file ``path``, read as RecBole reads it (``{}`` when empty)."""
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml_loader()) or {}


def merged_yaml(paths):
    """The files of ``paths`` that exist, merged in order (later files win)."""
    merged = {}
    for path in paths:
        if Path(path).is_file():
            merged.update(read_yaml(path))
    return merged


def model_config_files(model_name):
    """Our yaml files for ``model_name`` (``overall.yaml``, then the model's own), for RecBole's
    ``Config(config_file_list=...)``."""
    files = [properties_dir() / "overall.yaml", properties_dir() / "model" / f"{model_name}.yaml"]
    return [str(f) for f in files if f.is_file()]


def model_defaults(model_name):
    """Our ``overall.yaml`` and ``properties/model/<model_name>.yaml`` as one dict."""
    return merged_yaml(model_config_files(model_name))


def parse_values(mapping):
    """String values of ``mapping`` typed as RecBole types ``--key=value`` (numbers, lists,
    dicts, booleans; other text stays a string)."""
    from recbole.config import Config as RecBoleConfig

    return RecBoleConfig._convert_config_dict(None, dict(mapping))
