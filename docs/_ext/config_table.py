"""``{config-table} Model``: the model's yaml keys with their defaults, what the configuration
check allows, and the yaml file's own comment on each, read when the docs are built."""

import re

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from recbole_efficient.model import get_model
from recbole_efficient.property_files import properties_dir, read_yaml
from recbole_efficient.validation import collect_spec

_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w]*):[^#]*?(?:#\s*(?P<comment>.*))?$")


def yaml_keys(path):
    """``(key, comment)`` for each top-level key of a yaml file, in file order."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line)
        if match:
            rows.append((match["key"], (match["comment"] or "").strip()))
    return rows


def config_rows(model_name):
    path = properties_dir() / "model" / f"{model_name}.yaml"
    defaults = read_yaml(path)
    keys, _ = collect_spec(get_model(model_name))
    rows = []
    for key, comment in yaml_keys(path):
        spec = keys.get(key)
        rows.append((key, repr(defaults.get(key)), spec.allowed() if spec else "", comment))
    return rows


def _cell(text, literal=False):
    entry = nodes.entry()
    para = nodes.paragraph()
    para += nodes.literal(text=text) if literal else nodes.Text(text)
    entry += para
    return entry


def table(header, rows, widths):
    tgroup = nodes.tgroup(cols=len(header))
    for width in widths:
        tgroup += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for text in header:
        row += _cell(text)
    head += row
    tgroup += head
    body = nodes.tbody()
    for values in rows:
        row = nodes.row()
        for i, text in enumerate(values):
            row += _cell(text, literal=i < 2)
        body += row
    tgroup += body
    result = nodes.table()
    result += tgroup
    return result


class ConfigTable(SphinxDirective):
    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        self.env.note_dependency(str(properties_dir() / "model" / f"{name}.yaml"))
        rows = config_rows(name)
        return [table(("key", "default", "allowed", "meaning"), rows, (18, 14, 22, 46))]


def setup(app):
    app.add_directive("config-table", ConfigTable)
    return {"version": "1", "parallel_read_safe": True}
