"""fastlstm's thread pool, the threads of every parallel kernel (see
_fl_pool.h). One copy per process: the kernel modules reach it through
_pool.pxd."""

cdef extern from "_fl_pool.h":
    const int FL_POOL_THREADED
    ctypedef void (*fl_block_fn)(void* ctx, Py_ssize_t k) noexcept nogil
    void fl_pool_run(fl_block_fn fn, void* ctx, Py_ssize_t n, int threads) noexcept nogil
    void fl_pool_resize(int threads) noexcept nogil
    int fl_pool_workers() noexcept nogil


cdef void run_blocks(block_fn fn, void* ctx, Py_ssize_t n, int threads) noexcept nogil:
    """Run fn(ctx, k) for k in 0 .. n-1 on up to ``threads`` threads, the
    caller's included; blocks are claimed in index order, so a block may
    wait for a lower-numbered one."""
    fl_pool_run(fn, ctx, n, threads)


def threaded():
    """Whether the pool runs blocks on several threads (POSIX threads, or
    OpenMP where there are none)."""
    return bool(FL_POOL_THREADED)


def resize(int threads):
    """Keep at most ``threads - 1`` workers (the caller is the other
    thread); more are created when a call asks for them."""
    with nogil:
        fl_pool_resize(threads)


def workers():
    """The worker threads the pool has now."""
    return fl_pool_workers()
