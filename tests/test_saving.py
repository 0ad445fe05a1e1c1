"""Tests of whole-model saving: Sequential.save and fastlstm.models.load_model
restore the architecture and the weights exactly, every layer round-trips
through get_config / from_config, and a bad file raises a clear error."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from fastlstm.layers import Dense, Dropout, Embedding
from fastlstm.models import Sequential, load_model


def _tokens(count=6, length=7, seed=0):
    tokens = np.random.default_rng(seed).integers(1, 9, (count, length))
    tokens[:, -2:] = 0
    return tokens


def _models():
    """Built (model, input) pairs covering every layer kind and option that
    changes a config."""
    x = np.random.default_rng(1).standard_normal((5, 6, 3))
    pairs = [
        (Sequential([fl.LSTM(4, return_sequences=True, seed=0, dtype="float64"),
                     Dropout(0.2, seed=1, dtype="float64"),
                     fl.LSTM(3, go_backwards=True, use_bias=False, seed=2, dtype="float64"),
                     Dense(2, activation="tanh", seed=3, dtype="float64")], seed=7, name="stack"),
         x),
        (Sequential([Embedding(9, 4, mask_zero=True, seed=0),
                     fl.Bidirectional(fl.LSTM(5, return_sequences=True, seed=1),
                                      merge_mode="sum"),
                     Dense(3, activation="softmax", use_bias=False, seed=2)]),
         _tokens()),
        (Sequential([fl.LSTM(6, activation="hard_sigmoid", recurrent_activation="tanh",
                             unit_forget_bias=False, kernel_initializer="he_normal",
                             seed=4)]),
         x.astype(np.float32)),
    ]
    for model, data in pairs:
        model.build((None,) + data.shape[1:])
    return pairs


@pytest.mark.parametrize("index", range(3))
def test_saved_model_predicts_the_same_bit_for_bit(tmp_path, index):
    model, x = _models()[index]
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.fastlstm"
    model.save(path)
    restored = load_model(path)
    assert type(restored) is Sequential and restored.name == model.name
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    assert [layer.get_config() for layer in restored.layers] == \
        [layer.get_config() for layer in model.layers]
    for saved, loaded in zip(model.get_weights(), restored.get_weights()):
        assert saved.dtype == loaded.dtype and np.array_equal(saved, loaded)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)


def test_loaded_model_trains_after_compile(tmp_path):
    model, x = _models()[0]
    model.save(tmp_path / "m.fastlstm")
    restored = load_model(tmp_path / "m.fastlstm")
    with pytest.raises(RuntimeError, match="call compile"):
        restored.fit(x, np.zeros((5, 2)), verbose=0)
    restored.compile(optimizer="sgd", loss="mse")
    before = restored.get_weights()
    restored.fit(x, np.ones((5, 2)), epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, restored.get_weights()))


@pytest.mark.parametrize("layer", [
    fl.LSTM(3, return_state=True, stateful=True, dropout=0.1, recurrent_dropout=0.2, seed=5),
    fl.Bidirectional(fl.LSTM(2, return_sequences=True, seed=3), merge_mode=None),
    Dense(4, activation="relu", use_bias=False, dtype="float64"),
    Embedding(10, 3, mask_zero=True, embeddings_initializer="zeros"),
    Dropout(0.3, seed=2),
], ids=lambda layer: type(layer).__name__)
def test_every_layer_round_trips_through_its_config(layer):
    config = layer.get_config()
    copy = type(layer).from_config(config)
    assert type(copy) is type(layer) and copy.get_config() == config
    assert repr(copy) == repr(layer)
    spec = layers.serialize(layer)
    assert json.loads(json.dumps(spec)) == spec
    assert layers.deserialize(spec).get_config() == config


def test_unknown_layer_class_is_refused(tmp_path):
    model, _ = _models()[2]
    path = tmp_path / "m.fastlstm"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("weights.npz")
    config["model"]["layers"][0]["class_name"] = "GRU"
    edited = tmp_path / "edited.fastlstm"
    with zipfile.ZipFile(edited, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("weights.npz", weights)
    with pytest.raises(ValueError, match=r"cannot build: unknown layer class 'GRU'"):
        load_model(edited)


@pytest.mark.parametrize("damage", ["truncated", "not_zip", "no_config", "other_format",
                                    "wrong_weights"])
def test_damaged_file_raises_a_clear_error(tmp_path, damage):
    model, _ = _models()[2]
    path = tmp_path / "m.fastlstm"
    model.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.fastlstm"
    if damage == "truncated":
        bad.write_bytes(data[:len(data) // 2])
        match = "not a readable fastlstm model file"
    elif damage == "not_zip":
        bad.write_text("hello")
        match = "not a readable fastlstm model file"
    else:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("weights.npz")
        with zipfile.ZipFile(bad, "w") as archive:
            if damage == "no_config":
                match = "not a readable fastlstm model file"
            elif damage == "other_format":
                archive.writestr("config.json", json.dumps({"format": "keras"}))
                match = "is not a fastlstm model file"
            else:
                config["model"]["layers"][0]["config"]["units"] = 7
                archive.writestr("config.json", json.dumps(config))
                match = "do not fit layer 0"
            archive.writestr("weights.npz", weights)
    with pytest.raises(ValueError, match=match):
        load_model(bad)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.fastlstm")
    model, _ = _models()[2]
    with pytest.raises(ValueError, match=r"filepath must end in '.fastlstm'"):
        model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"filepath must end in '.fastlstm'"):
        load_model(tmp_path / "m.h5")


def test_save_is_atomic_and_respects_overwrite(tmp_path):
    model, _ = _models()[2]
    path = tmp_path / "m.fastlstm"
    model.save(path)
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save(path, overwrite=False)
    assert path.read_bytes() == first
    assert os.listdir(tmp_path) == ["m.fastlstm"]


def test_configuration_that_is_not_json_is_refused_before_writing(tmp_path):
    model = Sequential([Dense(2, kernel_initializer=fl.initializers.Constant(0.5))])
    model.build((None, 3))
    with pytest.raises(TypeError, match="must be JSON data to be saved"):
        model.save(tmp_path / "m.fastlstm")
    assert os.listdir(tmp_path) == []


def test_unbuilt_model_cannot_be_saved(tmp_path):
    with pytest.raises(RuntimeError, match="no weights yet"):
        Sequential([Dense(2)]).save(tmp_path / "m.fastlstm")
