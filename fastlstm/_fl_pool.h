/* fastlstm's thread pool: the threads every parallel kernel runs on.

   A job is N blocks, numbered 0 .. N-1: a function, a context pointer and N.
   The caller publishes it, then claims blocks itself, as do the idle
   workers, from one atomic counter, in index order. Once nothing is left to
   claim, the caller waits only for the blocks other threads are running:
   a worker the OS has not scheduled yet claims nothing and is not waited
   for, so on a busy machine a job costs what its blocks cost on the threads
   that did run, not a scheduler time slice. Because blocks are claimed in
   order, a block may wait for the progress of a lower-numbered one (which
   has been claimed, so it runs or has run); one thread alone runs every
   job, in order.

   Workers are created on first use, wait a little after each job (jobs come
   in quick succession in a training step), spinning, then yielding their
   core, then sleep on a futex (a condition variable outside Linux).
   fl_pool_resize stops the workers past a new size. One job runs at a
   time: a caller that finds the pool busy (another Python thread, or a
   block calling a kernel) runs its own job's blocks itself, so calls never
   wait for one another nor deadlock. A process forked while the pool runs
   starts the child without workers (the threads do not survive fork); the
   child creates its own on first use.

   Without POSIX threads (MSVC), the same API runs the blocks in an OpenMP
   loop of dynamic schedule, which also hands blocks out in order. */
#ifndef FL_POOL_H
#define FL_POOL_H

/* Py_ssize_t, the index type of the blocks, as Cython declares them. */
#include <Python.h>
#include <stddef.h>

typedef void (*fl_block_fn)(void* ctx, Py_ssize_t k);

#if !defined(_WIN32)

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define FL_POOL_THREADED 1
#define FL_POOL_MAX_WORKERS 255
/* A worker between jobs spins FL_POOL_SPINS rounds, then yields its core
   FL_POOL_YIELDS times (a thread sharing the core, the caller perhaps, runs
   instead of the spin), then sleeps. A caller waiting for blocks in
   progress spins FL_POOL_WAIT_SPINS rounds between yields. Both yield at
   once: a woken worker may share its caller's core for a while, and a
   spin there takes the time the other thread needs (measured on two cores
   of an AMD EPYC Zen 5, a training step of 32 sequences of 50 steps, 64
   units: 1.6 to 1.7 times faster on two threads than on one this way,
   1.05 to 1.6 times spinning a thousand rounds first). Yielding twenty
   thousand times keeps a worker awake through the Python between the jobs
   of a training step and between calls. */
#define FL_POOL_SPINS 1
#define FL_POOL_YIELDS 20000
#define FL_POOL_WAIT_SPINS 1
/* After a job whose caller waited longer for the workers' blocks than it
   took to run its own, the jobs of the next while run on the caller alone:
   a worker that shares a busy core runs at a fraction of its speed, and
   loses a time slice when preempted, so the caller runs the blocks sooner
   itself. The while is a time, not a number of jobs, so that a core that
   was busy for a moment (another program's threads spinning down after its
   own work) costs a few milliseconds, whatever the size of the jobs: it
   starts at FL_POOL_MIN_BACKOFF seconds, doubles with each such job up to
   FL_POOL_MAX_BACKOFF and halves with each job the workers did not hold up.
   On a busy machine the pool soon tries its workers only now and then, on
   a quiet one always. */
#define FL_POOL_MIN_BACKOFF 0.001
#define FL_POOL_MAX_BACKOFF 0.064
/* The low half of the claim word is the next block; this marks a job whose
   fields are being written. */
#define FL_POOL_CLOSED 0xFFFFFFFFu

#if defined(__x86_64__) || defined(__i386__)
#define fl_pool_pause() __builtin_ia32_pause()
#else
#define fl_pool_pause() ((void)0)
#endif

typedef struct {
    /* The job: its generation in the high 32 bits, the next unclaimed
       block in the low 32. A worker reads the job's fields, then claims by
       compare-and-swap on this word, so a claim only succeeds on the job
       whose fields it read. */
    uint64_t claim;
    fl_block_fn fn;
    void* ctx;
    Py_ssize_t n;
    int helpers;               /* workers 0 .. helpers-1 may join */
    Py_ssize_t finished;       /* blocks of the job done */
    int held_up;               /* a block waited long for another's progress */
    uint32_t epoch;            /* the last generation; workers sleep on it */
    int sleepers;              /* workers asleep (or going to sleep) */
    int limit;                 /* workers at or past this index stop */
    int started;               /* workers created */
    double skip_until;         /* jobs run on their caller alone until then */
    double backoff;            /* the seconds skipped after the next slow job */
    pthread_t threads[FL_POOL_MAX_WORKERS];
} fl_pool_t;

static fl_pool_t fl_pool;
static pthread_mutex_t fl_pool_job_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fl_pool_once = PTHREAD_ONCE_INIT;
static __thread int fl_pool_in_job;
#if !defined(__linux__)
static pthread_mutex_t fl_pool_sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fl_pool_wake_cond = PTHREAD_COND_INITIALIZER;
#endif

/* Sleep while the epoch is still `seen` (spurious returns are fine: the
   caller checks again); wake every sleeper. */
static void fl_pool_sleep(uint32_t seen) {
#if defined(__linux__)
    syscall(SYS_futex, &fl_pool.epoch, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    pthread_mutex_lock(&fl_pool_sleep_lock);
    if (__atomic_load_n(&fl_pool.epoch, __ATOMIC_SEQ_CST) == seen)
        pthread_cond_wait(&fl_pool_wake_cond, &fl_pool_sleep_lock);
    pthread_mutex_unlock(&fl_pool_sleep_lock);
#endif
}

static void fl_pool_wake(void) {
#if defined(__linux__)
    syscall(SYS_futex, &fl_pool.epoch, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    pthread_mutex_lock(&fl_pool_sleep_lock);
    pthread_cond_broadcast(&fl_pool_wake_cond);
    pthread_mutex_unlock(&fl_pool_sleep_lock);
#endif
}

/* A new epoch: the workers' signal that something changed (a job, or the
   limit), waking the sleeping ones. */
static uint32_t fl_pool_next_epoch(void) {
    uint32_t epoch = __atomic_add_fetch(&fl_pool.epoch, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&fl_pool.sleepers, __ATOMIC_SEQ_CST) > 0)
        fl_pool_wake();
    return epoch;
}

/* Claim and run blocks of the current job while there are any; `worker`
   is the worker's index, -1 for the caller. */
static void fl_pool_help(int worker) {
    uint64_t seen = __atomic_load_n(&fl_pool.claim, __ATOMIC_ACQUIRE);
    fl_block_fn fn = __atomic_load_n(&fl_pool.fn, __ATOMIC_RELAXED);
    void* ctx = __atomic_load_n(&fl_pool.ctx, __ATOMIC_RELAXED);
    Py_ssize_t n = __atomic_load_n(&fl_pool.n, __ATOMIC_RELAXED);
    int helpers = __atomic_load_n(&fl_pool.helpers, __ATOMIC_RELAXED);
    /* Pairs with the publisher's release fence: if these fields are a later
       job's, the claim below sees that job's closed word and fails. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t generation = seen >> 32;
    if (worker >= helpers)
        return;
    for (;;) {
        uint64_t next = seen & 0xFFFFFFFFu;
        if ((seen >> 32) != generation || next >= (uint64_t)n)
            return;
        if (__atomic_compare_exchange_n(&fl_pool.claim, &seen, seen + 1, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            fn(ctx, (Py_ssize_t)next);
            __atomic_add_fetch(&fl_pool.finished, 1, __ATOMIC_RELEASE);
            seen = __atomic_load_n(&fl_pool.claim, __ATOMIC_ACQUIRE);
        }
    }
}

static void* fl_pool_worker(void* arg) {
    int index = (int)(intptr_t)arg;
    for (;;) {
        uint32_t epoch = __atomic_load_n(&fl_pool.epoch, __ATOMIC_ACQUIRE);
        if (index >= __atomic_load_n(&fl_pool.limit, __ATOMIC_ACQUIRE))
            return NULL;
        fl_pool_help(index);
        int spins = 0;
        while (__atomic_load_n(&fl_pool.epoch, __ATOMIC_ACQUIRE) == epoch) {
            if (++spins < FL_POOL_SPINS) {
                fl_pool_pause();
                continue;
            }
            if (spins < FL_POOL_SPINS + FL_POOL_YIELDS) {
                sched_yield();
                continue;
            }
            __atomic_add_fetch(&fl_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&fl_pool.epoch, __ATOMIC_SEQ_CST) == epoch)
                fl_pool_sleep(epoch);
            __atomic_sub_fetch(&fl_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            spins = 0;
        }
    }
}

/* In a forked child: the parent's workers do not exist here, and the job
   lock may have been held by a thread that does not either. */
static void fl_pool_after_fork(void) {
    fl_pool.started = 0;
    fl_pool.limit = 0;
    fl_pool.sleepers = 0;
    fl_pool_in_job = 0;
    pthread_mutex_init(&fl_pool_job_lock, NULL);
#if !defined(__linux__)
    pthread_mutex_init(&fl_pool_sleep_lock, NULL);
    pthread_cond_init(&fl_pool_wake_cond, NULL);
#endif
}

static void fl_pool_register_fork(void) {
    pthread_atfork(NULL, NULL, fl_pool_after_fork);
}

/* Create workers up to `workers` (job lock held); returns how many run. */
static int fl_pool_grow(int workers) {
    if (workers > FL_POOL_MAX_WORKERS)
        workers = FL_POOL_MAX_WORKERS;
    pthread_once(&fl_pool_once, fl_pool_register_fork);
    if (workers <= fl_pool.started)
        return fl_pool.started;
    __atomic_store_n(&fl_pool.limit, workers, __ATOMIC_RELEASE);
    while (fl_pool.started < workers) {
        if (pthread_create(&fl_pool.threads[fl_pool.started], NULL, fl_pool_worker,
                           (void*)(intptr_t)fl_pool.started) != 0)
            break;
        fl_pool.started++;
    }
    __atomic_store_n(&fl_pool.limit, fl_pool.started, __ATOMIC_RELEASE);
    return fl_pool.started;
}

static double fl_pool_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static void fl_pool_run_inline(fl_block_fn fn, void* ctx, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        fn(ctx, k);
}

/* Run blocks 0 .. n-1 of fn on up to `threads` threads, the caller's
   included, and return once all are done. */
static void fl_pool_run(fl_block_fn fn, void* ctx, Py_ssize_t n, int threads) {
    if (threads < 2 || n < 2 || n >= (Py_ssize_t)FL_POOL_CLOSED || fl_pool_in_job
            || pthread_mutex_trylock(&fl_pool_job_lock) != 0) {
        fl_pool_run_inline(fn, ctx, n);
        return;
    }
    int helpers = fl_pool_grow(threads - 1);
    if (helpers > threads - 1)
        helpers = threads - 1;
    if (helpers == 0 || (fl_pool.skip_until > 0 && fl_pool_now() < fl_pool.skip_until)) {
        pthread_mutex_unlock(&fl_pool_job_lock);
        fl_pool_run_inline(fn, ctx, n);
        return;
    }
    /* Publish: close the word, write the fields, open the word with the
       new generation, then tell the workers. */
    uint64_t generation = (uint64_t)(__atomic_load_n(&fl_pool.epoch, __ATOMIC_RELAXED) + 1u);
    __atomic_store_n(&fl_pool.claim, (generation << 32) | FL_POOL_CLOSED, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&fl_pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.n, n, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.helpers, helpers, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.finished, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.held_up, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_pool.claim, generation << 32, __ATOMIC_RELEASE);
    /* A worker that was asleep takes a while to wake up: that is no sign
       of a busy core, so such a job does not count towards backing off. */
    int woken = __atomic_load_n(&fl_pool.sleepers, __ATOMIC_SEQ_CST) > 0;
    fl_pool_next_epoch();
    fl_pool_in_job = 1;
    double start = fl_pool_now();
    fl_pool_help(-1);
    double helped = fl_pool_now();
    /* Every block is claimed: wait for those other threads are running. */
    int spins = 0;
    while (__atomic_load_n(&fl_pool.finished, __ATOMIC_ACQUIRE) < n) {
        if (++spins < FL_POOL_WAIT_SPINS) {
            fl_pool_pause();
        } else {
            sched_yield();
            spins = 0;
        }
    }
    fl_pool_in_job = 0;
    double done = fl_pool_now();
    if (fl_pool.backoff < FL_POOL_MIN_BACKOFF)
        fl_pool.backoff = FL_POOL_MIN_BACKOFF;
    if (__atomic_load_n(&fl_pool.held_up, __ATOMIC_ACQUIRE)
            || (!woken && done - helped > helped - start)) {
        fl_pool.skip_until = done + fl_pool.backoff;
        if (fl_pool.backoff < FL_POOL_MAX_BACKOFF)
            fl_pool.backoff *= 2;
    } else if (fl_pool.backoff > FL_POOL_MIN_BACKOFF) {
        fl_pool.backoff /= 2;
    }
    pthread_mutex_unlock(&fl_pool_job_lock);
}

/* Called by a block of the running job that waited long for a block
   another thread was running (a step of a pass split by units, whose
   threads meet at every step): the job counts as one whose caller
   waited for its workers, so the next jobs run on the caller alone for a
   while, as after any job a busy core held up. */
static void fl_pool_held_up(void) {
    __atomic_store_n(&fl_pool.held_up, 1, __ATOMIC_RELEASE);
}

/* Keep at most threads - 1 workers: stop and join the ones past that; the
   next jobs use the workers again, whatever the last ones met. */
static void fl_pool_resize(int threads) {
    int workers = threads > 1 ? threads - 1 : 0;
    pthread_mutex_lock(&fl_pool_job_lock);
    fl_pool.skip_until = 0;
    fl_pool.backoff = FL_POOL_MIN_BACKOFF;
    if (workers < fl_pool.started) {
        __atomic_store_n(&fl_pool.limit, workers, __ATOMIC_RELEASE);
        fl_pool_next_epoch();
        for (int w = workers; w < fl_pool.started; w++)
            pthread_join(fl_pool.threads[w], NULL);
        fl_pool.started = workers;
    }
    pthread_mutex_unlock(&fl_pool_job_lock);
}

static int fl_pool_workers(void) { return fl_pool.started; }

#else  /* no POSIX threads: OpenMP, where the compiler has it */

#ifdef _OPENMP
#include <omp.h>
#define FL_POOL_THREADED 1
#else
#define FL_POOL_THREADED 0
#endif

static void fl_pool_run(fl_block_fn fn, void* ctx, Py_ssize_t n, int threads) {
    int k;
#ifdef _OPENMP
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (k = 0; k < (int)n; k++)
        fn(ctx, (Py_ssize_t)k);
}

static void fl_pool_resize(int threads) { (void)threads; }

static void fl_pool_held_up(void) {}

static int fl_pool_workers(void) { return 0; }

#endif
#endif
