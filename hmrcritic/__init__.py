"""hmrcritic: diffusion human mesh recovery, a critique agent that scores hypothesis groups, and group
preference alignment that uses those scores instead of 3D labels.

The Python entry points (README, "Python API"; signatures in docs/CONTRACTS.md)::

    from hmrcritic.hmr.body import load_body_model          # BodyModel (mannequin or real SMPL)
    from hmrcritic.hmr.data import load_split, sample_from_user
    from hmrcritic.hmr.diffusion import load_model, condition_from_keypoints, sample
    from hmrcritic.agent.api import critique_group          # -> ScoredGroup
    from hmrcritic.agent.report import write_report         # ScoredGroup -> report.html
    from hmrcritic.agent.explore import explore
    from hmrcritic.memory import MemoryStore
    from hmrcritic.alignment.export import export, ExportConfig
    from hmrcritic.alignment.finetune import finetune, FinetuneConfig
    from hmrcritic.hmr.evaluate import evaluate_model

Errors a user can cause are ``hmrcritic.errors.HMRCriticError`` subclasses (``InputError``, ``AssetError``,
``JudgeError``). The subpackages are attributes of this one, imported on first use (``hmrcritic.errors.InputError``
after a bare ``import hmrcritic``), so importing it stays cheap: no torch, no file, no connection.
"""

import importlib as _importlib

__version__ = "0.1.0"

# importable on first attribute access (PEP 562): after ``import hmrcritic`` alone, ``hmrcritic.errors`` was an
# AttributeError — raised from an ``except hmrcritic.errors.InputError:`` clause, it hid the error it was to catch —
# and dir() listed nothing to discover
_SUBMODULES = ("agent", "alignment", "config", "errors", "hmr", "io", "memory", "redact")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})


def _lazy_exports(package: str, names: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for a subpackage: ``names`` (name → defining module) and its submodules are
    imported on first access, so ``import hmrcritic.hmr`` loads no torch and ``dir()`` / tab completion list them.

    ``hmrcritic.agent.critique_group`` was an AttributeError, ``dir(hmrcritic.agent)`` listed none of the API (only
    ``hmrcritic.memory`` exported its names) and ``hmrcritic.alignment.export`` was one after ``import hmrcritic``
    alone. A name equal to a submodule's (``alignment.export``, ``agent.explore``) is the submodule, never the
    function: the attribute would change from one to the other once the submodule was imported."""
    def submodules() -> set[str]:
        import pkgutil

        return {m.name for m in pkgutil.iter_modules(namespace["__path__"])}

    def __getattr__(name: str):
        if name in names:
            value = getattr(_importlib.import_module(names[name]), name)
            namespace[name] = value  # found by the plain lookup from now on
            return value
        if not name.startswith("_") and name in submodules():
            return _importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *names, *submodules()})

    return __getattr__, __dir__
