"""Tests of ``python -m fastlstm demo``: the text it learns, a short run end to
end (the loss falls, samples and the speed comparison are printed), and its
command line."""
import re
import string
import subprocess
import sys

import pytest

from fastlstm.tools import demo
from fastlstm.__main__ import main


def test_corpus_is_printable_english_from_the_standard_library():
    text = demo.corpus()
    assert len(text) > 100_000
    assert set(text) <= set(string.printable) - set("\t\r\x0b\x0c")
    assert "Return" in text and " the " in text
    assert text == demo.corpus()


@pytest.mark.slow
def test_short_demo_run_learns_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastlstm", "demo", "--seconds", "1", "--units", "16"],
        capture_output=True, cwd=tmp_path, timeout=120)
    # Bytes, not text: universal newlines would turn a bar's \r into \n.
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Sampled before training:\n    Return the " in out
    assert "Sampled after training:\n    Return the " in out
    assert re.search(r"fastlstm kernels( +\d+\.\d ms){2}\n  NumPy reference( +\d+\.\d ms){2}\n"
                     r"  speed-up( +\d+\.\dx){2}\n", out)
    # Piped output, as Keras writes it: one line per epoch, no redrawn bar.
    assert "\r" not in out
    assert re.search(r"Epoch 1/\d+\n\d+/\d+ - \S+ - \S+/step - loss: \d", out)
    before, after = map(float, re.search(r"Held-out loss (\d+\.\d+) -> (\d+\.\d+)", out).groups())
    assert after < before - 1.0


def test_demo_without_docstrings_says_why(monkeypatch, capsys):
    monkeypatch.setattr(demo, "corpus", lambda: "")
    assert demo.run(seconds=1, units=4) == 1
    assert "-OO" in capsys.readouterr().err


@pytest.mark.parametrize("argument", [["--seconds", "0"], ["--units", "0"],
                                      ["--seconds", "abc"]])
def test_demo_rejects_bad_arguments(argument, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo"] + argument)
    assert exit_info.value.code == 2
    assert "demo: error: argument" in capsys.readouterr().err


def test_demo_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert all(option in out for option in ("--seconds", "--units", "--seed", "--threads"))
