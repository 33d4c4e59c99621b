"""Group preference export and finetuning (GPA, Diffusion-DPO, best-of-group SFT).

What a notebook uses (each loads on first access; importing this package loads no torch)::

    from hmrcritic.alignment.export import export, ExportConfig        # -> ExportSummary
    from hmrcritic.alignment.finetune import finetune, FinetuneConfig  # -> Path of the finetuned checkpoint
    from hmrcritic.alignment import validate_dataset                   # -> ValidationReport

The functions ``export`` and ``finetune`` are reached through their submodules (``alignment.export.export``): the
package attributes ``export`` and ``finetune`` are those modules. The configs, records and ``validate_dataset``
are importable from here too. Signatures: docs/CONTRACTS.md "alignment/".
"""

from hmrcritic import _lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ExportConfig", "ExportSummary"), "hmrcritic.alignment.export"),
    **dict.fromkeys(("FinetuneConfig", "TrainingDiverged"), "hmrcritic.alignment.finetune"),
    **dict.fromkeys(("validate_dataset", "ValidationReport", "DatasetHeader", "GroupRecord"),
                    "hmrcritic.alignment.dataset"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
