"""The tools behind ``python -m fastlstm``'s commands: the benchmark and the demo.

They measure and show the library; the library never imports them, so
``import fastlstm`` loads none of this. ``sizes.py`` names the benchmark's
sizes (the one definition the command line, the benchmarks and the docs
read); ``bench.py`` times fastlstm against its peers at those sizes,
``models.py`` one epoch of ``fit`` on whole models, ``torch_adapter.py``
:class:`fastlstm.torch.LSTM` and ``keras_adapter.py``
:class:`fastlstm.keras.LSTM` inside their frameworks; ``demo.py`` trains a
character-level language model.
"""
