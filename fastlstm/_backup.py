"""The files and the contents of :class:`fastlstm.callbacks.BackupAndRestore`'s backups.

A backup is one file, ``backup-<number>.state``: a first line naming the
format, the length of a JSON header (8 bytes, little-endian), the header,
the arrays' bytes one after the other, and the CRC-32 checksum of all that
(4 bytes, little-endian). The header holds the state, in which
``{"__array__": k}`` stands for the ``k``-th array, and each array's dtype
and shape. Raw arrays cost one copy to the file, where an ``.npz`` costs
one more in memory and zipfile's checksums of each member. A backup is
written as :mod:`fastlstm.saving` writes its files, to a temporary file
renamed over the target, and read back and checked against its checksum
before the backup before it goes: a crash leaves whole backups only, and
a damaged one is found.

What a backup holds (:func:`capture`): the weights, the optimizer's state
and where the fit is (epoch and batch), which every rank shares; and for
each rank (several under MPI) what may differ between them: every random
generator of the model and its layers (the model's shuffling, each layer's
dropout, recurrent-dropout and Dropout generators), the states a stateful
layer carries, where the data is, the epoch's running loss and metrics,
and the state of every callback that keeps one (the History included).
"""
import json
import math
import os
import re
import zlib

import numpy as np

from ._validation import describe
from ._model_files import _assign_weights, _build_for, _write_atomically

_MAGIC = b"fastlstm backup 1\n"
_FILE = re.compile(r"backup-(\d+)\.state$")
_TEMPORARY = re.compile(r"backup-\d+\.state\.[0-9a-f]+\.tmp$")


def _flatten(value, arrays, where):
    """``value`` as JSON data, each array appended to ``arrays``."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where} must hold numbers to be backed up, got {describe(value)}")
        arrays.append(np.ascontiguousarray(value))
        return {"__array__": len(arrays) - 1}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where} must have str keys, got {describe(key)}")
        return {key: _flatten(item, arrays, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(item, arrays, f"{where}[{k}]") for k, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} must be plain data (dicts with str keys, lists, numbers, str, "
                    f"None, NumPy arrays) to be backed up, got {describe(value)}")


def _unflatten(value, arrays):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {key: _unflatten(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_unflatten(item, arrays) for item in value]
    return value


def backup_files(directory):
    """``[(number, path), ...]`` of the backups in ``directory``, newest first."""
    if not os.path.isdir(directory):
        return []
    found = [(int(match.group(1)), os.path.join(directory, name))
             for name, match in ((name, _FILE.match(name)) for name in os.listdir(directory))
             if match]
    return sorted(found, reverse=True)


def remove_unfinished(directory):
    """Delete the temporary files of writes a crash interrupted."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if _TEMPORARY.match(name):
                os.unlink(os.path.join(directory, name))


def write(directory, number, content):
    """Write ``content`` (plain data) as backup ``number`` of ``directory``,
    check it reads back whole, and return its path."""
    arrays = []
    state = _flatten(content, arrays, "the backup")
    header = json.dumps({"state": state, "arrays": [[a.dtype.str, a.shape] for a in arrays]})
    header = header.encode("utf-8")
    path = os.path.join(directory, f"backup-{number:08d}.state")

    def write_parts(stream):
        checksum = 0
        for part in [_MAGIC, len(header).to_bytes(8, "little"), header] + [
                memoryview(array.reshape(-1).view(np.uint8)) for array in arrays]:
            stream.write(part)
            checksum = zlib.crc32(part, checksum)
        stream.write(checksum.to_bytes(4, "little"))

    _write_atomically(path, True, write_parts)
    _checked_bytes(path)
    return path


def _checked_bytes(path):
    """The bytes of the backup at ``path`` before its checksum; ValueError
    unless they match it."""
    with open(path, "rb") as stream:
        data = stream.read()
    if not data.startswith(_MAGIC):
        raise ValueError(f"backup {path!r} is not a fastlstm backup (it does not begin with "
                         f"{_MAGIC!r})")
    if len(data) < len(_MAGIC) + 12 or \
            zlib.crc32(memoryview(data)[:-4]) != int.from_bytes(data[-4:], "little"):
        raise ValueError(f"backup {path!r} is damaged: its bytes do not match their checksum")
    return memoryview(data)[:-4]


def read(path):
    """The content of the backup at ``path``; ValueError if it is damaged."""
    data = _checked_bytes(path)
    start = len(_MAGIC) + 8
    end = start + int.from_bytes(data[len(_MAGIC):start], "little")
    try:
        header = json.loads(bytes(data[start:end]).decode("utf-8"))
        arrays = []
        for dtype, shape in header["arrays"]:
            dtype, count = np.dtype(dtype), math.prod(shape)
            arrays.append(np.frombuffer(data, dtype, count, end).reshape(shape).copy())
            end += count * dtype.itemsize
        if end != len(data):
            raise ValueError(f"{len(data) - end} bytes follow the arrays")
        return _unflatten(header["state"], arrays)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"backup {path!r} cannot be read: {error}") from None


def _walk_layers(model):
    """``(key, layer)`` for every layer of ``model`` and the layers inside them."""
    pending = [(f"layer_{i}", layer) for i, layer in enumerate(model.layers)]
    while pending:
        key, layer = pending.pop(0)
        yield key, layer
        sublayers = getattr(layer, "_sublayers", None)
        if sublayers is not None:
            pending[:0] = [(f"{key}/{j}", inner) for j, inner in enumerate(sublayers())]


def _generators(model):
    """Every random generator of ``model`` and its layers, keyed by where it is."""
    found = {}
    for key, owner in [("model", model)] + list(_walk_layers(model)):
        for attribute, value in vars(owner).items():
            if isinstance(value, np.random.Generator):
                found[f"{key}/{attribute}"] = value
    return found


def _carried_states(model):
    """The states stateful layers carry to their next call, keyed by layer."""
    return {key: layer._states for key, layer in _walk_layers(model)
            if getattr(layer, "stateful", False)}


def capture(model, callbacks, epoch, step):
    """``(shared, own)``: the state every rank shares (weights, optimizer,
    position: fit resumes at batch ``step`` of ``epoch``) and this rank's."""
    shared = {"weights": model.params, "optimizer": model.optimizer.get_state(),
              "epoch": epoch, "step": step}
    own = {"generators": {key: generator.bit_generator.state
                          for key, generator in _generators(model).items()},
           "carried": _carried_states(model),
           "fit": model._fit_state(),
           "callbacks": [[type(callback).__name__, state] for callback, state in
                         ((callback, callback.get_state()) for callback in callbacks)
                         if state is not None]}
    return shared, own


def _check_same(what, recorded, own):
    if recorded != own:
        raise ValueError(f"the backup does not match this fit: its {what} are {recorded}, "
                         f"this fit's are {own}")


def restore(model, callbacks, shared, own, path):
    """Put back the state :func:`capture` took, once all of it has been
    checked against ``model`` and ``callbacks`` (ValueError naming the first
    difference, before anything changes); fit then resumes where it was."""
    what = f"the weights of backup {path!r}"
    if not model.built:
        _build_for(model, shared["weights"], what)
    _assign_weights(model, shared["weights"], what, check_only=True)
    variables = model._variables_and_grads()[0]
    model.optimizer.set_state(shared["optimizer"], variables, check_only=True)
    generators = _generators(model)
    _check_same("random generators", sorted(own["generators"]), sorted(generators))
    for key, generator in generators.items():
        _check_same(f"kinds of generator {key}", own["generators"][key]["bit_generator"],
                    generator.bit_generator.state["bit_generator"])
    _check_same("stateful layers", sorted(own["carried"]), sorted(_carried_states(model)))
    stateful = [callback for callback in callbacks if callback.get_state() is not None]
    _check_same("callbacks with a state", [kind for kind, _ in own["callbacks"]],
                [type(callback).__name__ for callback in stateful])
    model._check_fit_state(own["fit"])

    _assign_weights(model, shared["weights"], what)
    model.optimizer.set_state(shared["optimizer"], variables)
    for key, generator in generators.items():
        generator.bit_generator.state = own["generators"][key]
    layers = dict(_walk_layers(model))
    for key, states in own["carried"].items():
        layers[key]._states = None if states is None else [np.array(s) for s in states]
    set_callback_states(stateful, own)
    model._resume_fit(own["fit"], shared["epoch"], shared["step"])
    return stateful


def set_callback_states(stateful, own):
    """Give each of ``stateful`` (the callbacks with a state) its recorded state."""
    for callback, (_, state) in zip(stateful, own["callbacks"]):
        callback.set_state(state)
