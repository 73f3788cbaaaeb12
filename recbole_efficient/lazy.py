"""Public names of a package that load their module on first use (PEP 562)."""

import importlib


def lazy_getattr(package, public):
    """A module ``__getattr__`` for ``package`` that imports ``public[name]`` (a module path)
    the first time ``name`` is read, and keeps the value in the package."""
    module = importlib.import_module(package)

    def __getattr__(name):
        if name in public:
            value = getattr(importlib.import_module(public[name]), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
