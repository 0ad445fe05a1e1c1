"""The instruction-set builds of the LSTM kernels: the one table of them.

``setup.py`` compiles ``_lstm.pyx`` once per build it finds the compiler
able to target (each extra build is a three-line stub that includes the same
source); :mod:`fastlstm._kernels` loads the widest build this CPU runs.
Plain data, so that ``setup.py`` can read it before fastlstm is built.

Each build: the extension module, the C compiler flags it is compiled with
(beyond the common ones), and the CPU features, as named by
``fastlstm._cpu.cpu_features()``, that it needs. Narrowest first.
"""
BUILDS = {
    "baseline": {"module": "_lstm", "flags": [], "needs": []},
    "avx2": {"module": "_lstm_avx2", "flags": ["-mavx2", "-mfma"], "needs": ["avx2"]},
    "avx512": {
        "module": "_lstm_avx512",
        "flags": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                  "-mavx512cd", "-mprefer-vector-width=512"],
        "needs": ["avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"],
    },
}
