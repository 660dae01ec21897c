"""Check any implementation of a spec: pass or fail against the tolerance table, per-step
error growth, and a diagnosis of what went wrong.

An implementation is a callable ``fn(params, x, state, mask) -> (outputs, final_state)``
taking canonical float parameters, inputs (batch, time, input), the initial state
tuple and a bool mask (batch, time), returning arrays NumPy can read. Implementations
outside Python run the golden vectors (``novolstm.conformance.golden``) and hand back their
results as an ``.npz`` (see ``check_results``).

The kit is three modules: ``kit`` (``check``, ``check_results``, the reports and the
diagnosis, whose names this package re-exports: ``novolstm.conformance.check``),
``golden`` (the golden vectors and the stress cases) and ``mistakes`` (the float64
models of porting mistakes the diagnosis tries).

The expected values come from a float64 oracle that shares nothing with code
generation: the hand-written ``novolstm.reference`` for the built-in cells, the
spec interpreter ``novolstm.interpret`` for any other spec. Every compared array
must be finite where the reference is: NaN or inf fails.

When a case fails, the report names the first step and quantity that diverge and
tries the mistakes porting code makes (``novolstm.conformance.mistakes``: gate order, another
LayerNorm epsilon or the sample variance, softmax over the batch axis or without its
maximum subtracted, a hard sigmoid, a dropped bias or recurrent term, gates swapping
roles in a state update, an old state read, masking done wrong, another cell, the
state tuple reordered, a lower precision than asked): each one that reproduces the
implementation's outputs is listed, and the report names the one that reproduces
the most failing cases.

Examples:
    >>> import novolstm
    >>> spec = novolstm.load_spec("lstm")
    >>> report = check(lambda p, x, s, m: novolstm.run(spec, p, x, s, mask=m), spec)
    >>> report.passed
    True
"""

from .kit import (
    LOWER_PRECISIONS,
    CaseResult,
    Report,
    check,
    check_results,
    diagnose_mistakes,
    golden_cases,
    known_mistakes,
)

__all__ = [
    "LOWER_PRECISIONS",
    "CaseResult",
    "Report",
    "check",
    "check_results",
    "diagnose_mistakes",
    "golden_cases",
    "known_mistakes",
]
