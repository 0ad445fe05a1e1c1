"""fastlstm's thread pool, the threads of every parallel kernel (see
_fl_pool.h). One copy per process: the kernel modules reach it through
_pool.pxd."""
from libc.time cimport clock, clock_t, CLOCKS_PER_SEC

cdef extern from "_fl_pool.h":
    const int FL_POOL_THREADED
    ctypedef void (*fl_block_fn)(void* ctx, Py_ssize_t k) noexcept nogil
    void fl_pool_run(fl_block_fn fn, void* ctx, Py_ssize_t n, int threads) noexcept nogil
    void fl_pool_resize(int threads) noexcept nogil
    int fl_pool_workers() noexcept nogil
    void fl_pool_held_up() noexcept nogil


cdef void run_blocks(block_fn fn, void* ctx, Py_ssize_t n, int threads) noexcept nogil:
    """Run fn(ctx, k) for k in 0 .. n-1 on up to ``threads`` threads, the
    caller's included; blocks are claimed in index order, so a block may
    wait for a lower-numbered one."""
    fl_pool_run(fn, ctx, n, threads)


cdef void report_held_up() noexcept nogil:
    """Called by a block of the running job that waited long for another
    thread's block: the next jobs run on their caller alone for a while, as
    after a job whose caller waited long for its workers."""
    fl_pool_held_up()


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


cdef extern from *:
    """
    static void fl_probe_set(long* flag) { *(volatile long*)flag = 1; }
    static long fl_probe_get(long* flag) { return *(volatile long*)flag; }
    """
    void fl_probe_set(long* flag) noexcept nogil
    long fl_probe_get(long* flag) noexcept nogil


ctypedef struct _Probe:
    long second_started
    bint overlapped
    double patience


cdef void _probe_block(void* ctx, Py_ssize_t k) noexcept nogil:
    cdef _Probe* probe = <_Probe*>ctx
    cdef clock_t start = clock()
    if k == 1:
        fl_probe_set(&probe.second_started)
        return
    # Up to ``patience`` seconds of CPU time for block 1 to start elsewhere.
    while not fl_probe_get(&probe.second_started):
        if <double>(clock() - start) / CLOCKS_PER_SEC > probe.patience:
            return
    probe.overlapped = True


def _blocks_overlap(int threads, double patience):
    """Test hook: whether, in a job of two blocks on ``threads`` threads,
    block 1 started (on a worker) while block 0 was still running; block 0
    waits at most ``patience`` seconds of CPU time for it, then ends."""
    cdef _Probe probe
    probe.second_started, probe.overlapped, probe.patience = 0, False, patience
    with nogil:
        run_blocks(_probe_block, &probe, 2, threads)
    return bool(probe.overlapped)
