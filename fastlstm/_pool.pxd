# fastlstm's thread pool (_fl_pool.h), one per process: every kernel module
# runs its parallel work through these, so the workers of one module never
# spin against another's for the cores.
ctypedef void (*block_fn)(void* ctx, Py_ssize_t k) noexcept nogil


cdef void run_blocks(block_fn fn, void* ctx, Py_ssize_t n, int threads) noexcept nogil


cdef void report_held_up() noexcept nogil
