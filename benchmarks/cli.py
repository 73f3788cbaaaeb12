"""Command-line pieces the benchmark scripts share: a script's parser and usage line,
``KEY=VALUE`` options typed as RecBole types ``--key=value``, the ``--key=value`` config
overrides after a script's own options, and the command line a result file records.

One parser per idea, so that a value means the same in every script.
"""

from __future__ import annotations

import argparse
import sys

from recbole_efficient.property_files import parse_values


def key_value(text):
    """``"key=value"`` -> ``(key, value)``, the value typed as RecBole types ``--key=value``;
    an ``argparse`` type (ArgumentTypeError without '=')."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), parse_values({"value": value})["value"]


def add_set_option(parser, text="any other config key, applied to the models whose yaml "
                                 "defines it"):
    """``--set KEY=VALUE`` (repeatable, help ``text``) into ``args.extra``, a list of
    ``(key, value)``."""
    parser.add_argument("--set", dest="extra", action="append", type=key_value, default=[],
                        metavar="KEY=VALUE", help=text)


def parser(script, doc, overrides_for=None):
    """The argument parser of benchmark ``script``: its usage line, the first line of ``doc``,
    defaults in the help. ``overrides_for`` (say ``"model"``): the script also takes any
    ``--key=value`` as a config override (see :func:`parse_with_overrides`), so options are
    never abbreviated, which would take an override for an option."""
    extra = {} if overrides_for is None else {
        "allow_abbrev": False,
        "epilog": f"Any other --key=value is a config override for every {overrides_for}."}
    return argparse.ArgumentParser(prog=prog(script), description=doc.splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                   **extra)


def parse_with_overrides(parser, argv=None):
    """``parser``'s options, and what follows them as ``args.overrides``
    (:func:`parse_overrides`)."""
    args, rest = parser.parse_known_args(argv)
    try:
        args.overrides = parse_overrides(rest)
    except ValueError as err:
        parser.error(str(err))
    return args


def parse_overrides(tokens):
    """``--key=value`` / ``--key value`` pairs into a dict, values typed as RecBole's command
    line types them (ValueError on anything else)."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ValueError(f"unexpected argument {tok!r} (overrides are --key=value)")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = tok[2:], tokens[i + 1]
            i += 2
        else:
            raise ValueError(f"override {tok!r} needs a value (--key=value)")
        out[key] = value
    return parse_values(out)


def prog(script):
    """How benchmark ``script`` is run (its usage line and recorded command start so)."""
    return f"python -m benchmarks.{script}"


def command_line(script, argv=None):
    """How to run benchmark ``script`` again with ``argv`` (default: this process's
    arguments), as a result file records it."""
    return " ".join([prog(script), *(sys.argv[1:] if argv is None else argv)])
