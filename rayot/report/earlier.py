"""What result rows written before rayot 0.4 did not record of their method, for the built-ins of
that time: name -> (display name, fixed label, order, trains).

Rows of 0.4 on record these themselves (the ``method_*`` columns of rayot.results.SCHEMA, filled
from the method when it trains), so this table never grows: a method added later needs no line
here. It lets a report of earlier results keep its names and order without importing the
methods (and torch). tests/test_architecture.py checks it against the registry.
"""

from __future__ import annotations

BUILTINS_BEFORE_0_4: dict[str, tuple[str, str | None, int, bool]] = {
    "zeroshot": ("CLIP", "zero-shot", 0, False),
    "coop": ("CoOp", None, 10, True),
    "cocoop": ("CoCoOp", None, 20, True),
    "kgcoop": ("KgCoOp", None, 30, True),
    "maple": ("MaPLe", None, 40, True),
    "promptsrc": ("PromptSRC", None, 50, True),
    "ivlp": ("IVLP", None, 60, True),
    "pointwise": ("Point-wise", "identity pairing", 80, True),
    "prompt_ot": ("Prompt-OT", None, 90, True),
}
