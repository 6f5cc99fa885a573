"""All-or-nothing forwards: a forward that raises leaves every parameter and buffer as it found them.

A training forward updates state in several steps (k-means init, affine statistics, the EMA,
dead-code expiry) and, in a residual or grouped stack, in several codebooks one after another;
a step that refuses its batch (an overflow, a non-finite projection) may come after others
already wrote. The outermost transactional forward snapshots the module's tensors and, on an
exception, puts them back, so "the codebook is unchanged" holds for the whole call.
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref

import torch

_OPEN = contextvars.ContextVar("vqtorch_state_transaction_open", default=False)


@contextlib.contextmanager
def state_transaction(module, active=True):
    """Run a forward of ``module`` that may update its state; undo every change if it raises.

    Parameters
    ----------
    module : torch.nn.Module
    active : bool
        Whether this call can change state at all (training, or statistics that update in
        evaluation too); False skips the snapshot. Inside an open transaction (a stack's
        stage) nothing more is taken: the outer one covers it.
    """
    if not active or _OPEN.get():
        yield
        return
    saved = _snapshot(module)
    token = _OPEN.set(True)
    try:
        yield
    except BaseException:
        _restore(saved)
        raise
    finally:
        _OPEN.reset(token)


def may_update_codebooks(module):
    """Whether a forward of ``module`` can change codebook state: it holds codebooks and is training,
    keeps affine statistics, or has a codebook still to initialise (the last two happen in evaluation
    too). At most one host sync: the ``initted`` flags are read together."""
    from .codebook import _Codebook  # the codebooks use this module: import at call time

    codebooks = [m for m in module.modules() if isinstance(m, _Codebook)]
    if not codebooks:
        return False
    if module.training or any(codebook.affine_param for codebook in codebooks):
        return True
    return not bool(torch.stack([codebook.initted.reshape(()) for codebook in codebooks]).all())


#: Per top module, the tensors its snapshots are copied into: allocated once and reused, since
#: fresh memory costs page faults on every call (2.7-9 ms against 0.4 ms for a k=8,192 codebook).
_STORES = weakref.WeakKeyDictionary()


def _snapshot(module):
    """(slot dict, name, tensor object, copy) for every parameter and buffer slot, shared ones once.

    The copies are normal tensors even under ``torch.inference_mode`` (an inference tensor kept in
    the store could not be written by a later call outside it).
    """
    store = _STORES.setdefault(module, {})
    saved, seen = [], set()
    with torch.inference_mode(False), torch.no_grad():
        for owner in module.modules():
            if id(owner) in seen:
                continue
            seen.add(id(owner))
            for kind, slots in (("parameter", owner._parameters), ("buffer", owner._buffers)):
                for name, tensor in slots.items():
                    copy = None
                    if tensor is not None:
                        key = (id(owner), kind, name)
                        copy = store.get(key)
                        if copy is None or copy.shape != tensor.shape or copy.dtype != tensor.dtype \
                                or copy.device != tensor.device or copy.is_inference():
                            copy = store[key] = torch.empty_like(tensor, memory_format=torch.contiguous_format)
                        copy.copy_(tensor.detach())
                    saved.append((slots, name, tensor, copy))
    return saved


def _restore(saved):
    """Put every slot back to its tensor object, holding its values from the snapshot.

    Through ``.data``, as the update steps write: no autograd version bump, so a graph built by an
    earlier call (gradient accumulation) still runs its backward. A tensor made under inference
    mode cannot be written outside it, and is replaced by a copy instead.
    """
    with torch.no_grad():
        for slots, name, tensor, values in saved:
            if tensor is not None:
                if tensor.is_inference() and not torch.is_inference_mode_enabled():
                    tensor = values.clone()
                else:
                    tensor.data.copy_(values)  # into the same memory: views and optimizers keep seeing it
            slots[name] = tensor
