# The kernels of _lstm.pyx, compiled for CPUs with AVX2 (see setup.py);
# fastlstm picks the widest variant the CPU supports when it is imported.
include "_lstm.pyx"
