"""The files and the contents of :class:`fastlstm.callbacks.BackupAndRestore`'s backups.

A backup is one uncompressed ``.npz`` file, ``backup-<number>.npz``: every
array it holds, under generated names, and a ``state.json`` member, the
rest of the state as JSON in which ``{"__array__": name}`` stands for an
array. Every member carries its CRC-32 checksum (the zip format's), checked
when a backup is read, and once right after it is written: only then does
the backup before it go. Files are written as :mod:`fastlstm.saving`
writes them, to a temporary file renamed over the target, so a crash
leaves whole backups only.

What a backup holds (:func:`capture`): the weights, the optimizer's state
and where the fit is (epoch and batch), which every rank shares; and for
each rank (several under MPI) what may differ between them: every random
generator of the model and its layers (the model's shuffling, each layer's
dropout, recurrent-dropout and Dropout generators), the states a stateful
layer carries, where the data is, the epoch's running loss and metrics,
and the state of every callback that keeps one (the History included).
"""
import json
import os
import re
import zipfile
import zlib

import numpy as np

from ._validation import describe
from .saving import _assign_weights, _build_for, _read_npz, _write_atomically

_STATE = "state.json"
_FILE = re.compile(r"backup-(\d+)\.npz$")
_TEMPORARY = re.compile(r"backup-\d+\.npz\.[0-9a-f]+\.tmp$")


def _flatten(value, arrays, where):
    """``value`` as JSON data, each array moved to ``arrays`` under a new name."""
    if isinstance(value, np.ndarray):
        name = f"array_{len(arrays)}"
        arrays[name] = value
        return {"__array__": name}
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
    arrays = {}
    state = json.dumps(_flatten(content, arrays, "the backup"))
    arrays[_STATE] = np.frombuffer(state.encode("utf-8"), np.uint8)
    path = os.path.join(directory, f"backup-{number:08d}.npz")
    _write_atomically(path, True, lambda stream: np.savez(stream, **arrays))
    _verify(path)
    return path


def _verify(path):
    """ValueError unless every member of the backup at ``path`` matches its checksum."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ValueError(f"backup {path!r} is damaged: {error}") from None
    if damaged is not None:
        raise ValueError(f"backup {path!r} is damaged: member {damaged!r} fails its checksum")


def read(path):
    """The content of the backup at ``path``; ValueError if it is damaged."""
    _verify(path)
    arrays = _read_npz(path, f"backup {path!r}")
    if _STATE not in arrays:
        raise ValueError(f"backup {path!r} has no {_STATE}: it is not a fastlstm backup")
    try:
        state = json.loads(arrays.pop(_STATE).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"backup {path!r} has an unreadable {_STATE}: {error}") from None
    return _unflatten(state, arrays)


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
