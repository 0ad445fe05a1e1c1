"""The files of :mod:`fastlstm.saving`: weights files (``.npz``) and model
files (``.fastlstm``), each written atomically and checked whole before
anything is read into a model.

Below :mod:`fastlstm.models`, which saves and loads through it, so that a
model module and its files do not import each other.
"""
import io
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

from ._validation import check_bool, check_path, describe

_FORMAT = "fastlstm.model"
_FORMAT_VERSION = 1
# What a model file's config.json holds beside the model's config.
_HEADER = {"format": _FORMAT, "version": _FORMAT_VERSION}


def _write_atomically(path, overwrite, write):
    """Call ``write(stream)`` on a temporary file next to ``path``, then
    rename it over ``path``."""
    overwrite = check_bool(overwrite, "overwrite")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"filepath {path!r} exists and overwrite=False")
    temporary = f"{path}.{secrets.token_hex(6)}.tmp"
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            # Named by the path asked for, not by the temporary file.
            raise OSError(error.errno, f"cannot write filepath {path!r}: "
                                       f"{error.strerror or error}") from error
        raise


def _model_weights(model, action):
    arrays = model.params
    if not arrays:
        raise RuntimeError(f"the model has no weights {action}: call build(input_shape) or "
                           f"the model on data first")
    return arrays


def save_weights(model, filepath, overwrite=True):
    """Write ``model``'s weights to the ``.npz`` file ``filepath``, atomically.

    See :meth:`fastlstm.Sequential.save_weights`.
    """
    path = check_path(filepath, "filepath", ".npz", "weights are saved as NumPy .npz")
    arrays = _model_weights(model, "yet")
    _write_atomically(path, overwrite, lambda stream: np.savez(stream, **arrays))


def _read_npz(source, what):
    """The named arrays of an ``.npz`` file (a path or a binary stream)."""
    try:
        archive = np.load(source, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named weights")
        with archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile,
            zlib.error) as error:
        raise ValueError(f"{what} is not a readable .npz weights file: {error}") from None


def _assign_weights(model, loaded, what, check_only=False):
    """Copy ``loaded`` into ``model``'s weights once every name and shape
    checks out (``check_only``: only check)."""
    expected = _model_weights(model, "to load into yet")
    missing = [name for name in expected if name not in loaded]
    unexpected = sorted(name for name in loaded if name not in expected)
    problems = []
    if missing:
        problems.append(f"missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"in the file but not in the model: {', '.join(unexpected)}")
    for name, array in expected.items():
        if name not in loaded:
            continue
        value = loaded[name]
        if value.dtype.kind not in "fiub":
            problems.append(f"{name} holds dtype {value.dtype}, not real numbers")
        elif value.shape != array.shape:
            problems.append(f"{name} has shape {value.shape} in the file, the model's is "
                            f"{array.shape}")
    if problems:
        raise ValueError(f"{what} does not match the model: {'; '.join(problems)}")
    if check_only:
        return
    for name, array in expected.items():
        np.copyto(array, loaded[name], casting="unsafe")


def load_weights(model, filepath):
    """Read weights written by :func:`save_weights` into ``model``.

    See :meth:`fastlstm.Sequential.load_weights`.
    """
    path = check_path(filepath, "filepath", ".npz", "weights are saved as NumPy .npz")
    _model_weights(model, "to load into yet")
    loaded = _read_npz(path, f"filepath {path!r}")
    _assign_weights(model, loaded, f"weights file {path!r}")


def _config_json(model):
    config = dict(_HEADER, model=model.get_config())
    try:
        return json.dumps(config, allow_nan=False, indent=1)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the model's configuration must be JSON data to be saved ({error}); "
                        f"give each layer its seed as an int and its initializers by name, "
                        f"or save only the weights with save_weights") from None


def save_model(model, filepath, overwrite=True):
    """Write ``model``'s architecture and weights to ``filepath`` (``.fastlstm``).

    See :meth:`fastlstm.Sequential.save`.
    """
    path = check_path(filepath, "filepath", ".fastlstm", "a fastlstm model file")
    arrays = _model_weights(model, "yet")
    config = _config_json(model)
    weights = io.BytesIO()
    np.savez(weights, **arrays)

    def write(stream):
        with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("config.json", config)
            archive.writestr("weights.npz", weights.getvalue())

    _write_atomically(path, overwrite, write)


def read_model(filepath):
    """What the model file ``filepath`` holds: ``(config, weights, what)``,
    the model's :meth:`~fastlstm.Sequential.get_config` dict (format and
    version checked), its weights file as bytes for :func:`fill_model`, and
    ``what`` naming the file in errors."""
    path = check_path(filepath, "filepath", ".fastlstm", "a fastlstm model file")
    what = f"model file {path!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json").decode("utf-8"))
            weights = archive.read("weights.npz")
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error,
            UnicodeDecodeError) as error:
        raise ValueError(f"{what} is not a readable fastlstm model file: {error}") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{what} is not a fastlstm model file (its config.json has no "
                         f"format {_FORMAT!r})")
    if config.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{what} has format version {describe(config.get('version'))}; this "
                         f"fastlstm reads version {_FORMAT_VERSION}")
    return config.get("model"), weights, what


def fill_model(model, weights, what):
    """Build ``model``'s layers from the ``weights`` :func:`read_model`
    returned, then load them, once every name and shape checks out."""
    loaded = _read_npz(io.BytesIO(weights), f"the weights in {what}")
    _build_for(model, loaded, what)
    _assign_weights(model, loaded, f"the weights in {what}")


def _build_for(model, loaded, what):
    """Build each layer of ``model`` from its saved weights, which the file
    holds in the layer's ``get_weights`` order (that of its ``params``)."""
    for i, layer in enumerate(model.layers):
        prefix = f"layer_{i}/"
        arrays = [array for name, array in loaded.items() if name.startswith(prefix)]
        if layer.built or not arrays:
            continue
        try:
            layer.set_weights(arrays)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the weights in {what} do not fit layer {i}, "
                             f"{getattr(layer, 'name', '')!r} ({type(layer).__name__}): "
                             f"{error}") from None
