"""fastlstm's asv benchmarks.

- ``functional``: :func:`fastlstm.lstm_forward` / :func:`fastlstm.lstm_backward`,
  with the backend ("fast" or the NumPy "reference") as a parameter.
- ``layers``: the Keras-style :class:`fastlstm.LSTM` layer.
- ``comparison``: the speed-up of "fast" over "reference" and the largest
  relative difference between their results, measured side by side.

Every benchmark runs over the five sizes of docs/performance.rst and float32/float64.
Benchmarks of features a commit lacks raise ``NotImplementedError`` in
``setup``, which asv records as skipped, so ``asv run`` works over history.
"""
