/* How one of fastlstm's threads waits for another's progress without
   holding a core it needs: the pipelined stack's layers, each a block of
   one pool job, hand their steps over with these, and the threads of a
   forward pass split by units meet at each step with them. FL_OPENMP says whether
   the build has OpenMP (its default thread count). */
#ifndef FASTLSTM_FL_SYNC_H
#define FASTLSTM_FL_SYNC_H

#ifdef _OPENMP
#define FL_OPENMP 1
#else
#define FL_OPENMP 0
#endif

/* A waiting thread spins a bounded number of times, then yields its core,
   so that a thread the OS has not scheduled (on a busy machine) gets to
   run instead of the spinning one burning a whole time slice. */
#if defined(_WIN32)
#include <windows.h>
#define fl_yield() SwitchToThread()
#else
#include <sched.h>
#define fl_yield() sched_yield()
#endif
#if defined(__x86_64__) || defined(__i386__)
#define fl_pause() __builtin_ia32_pause()
#else
#define fl_pause() ((void)0)
#endif
#define FL_SPINS 2000
/* Wait until *done reaches target: spin a bounded number of times,
   then yield the core. A producer publishes how many steps of a layer
   are done. */
static inline void fl_wait_for(long* done, long target) {
    int spins = 0;
    while (__atomic_load_n(done, __ATOMIC_ACQUIRE) < target) {
        if (++spins < FL_SPINS) {
            fl_pause();
        } else {
            fl_yield();
            spins = 0;
        }
    }
}
static inline void fl_publish(long* done, long value) {
    __atomic_store_n(done, value, __ATOMIC_RELEASE);
}

/* The unit split of a forward pass: the threads that take part claim the
   blocks of each step's units (a block of step s is claimed by moving its
   word from s - 1 to s, so each block of each step runs once) and count
   the blocks done. */
static inline long fl_load(long* value) {
    return __atomic_load_n(value, __ATOMIC_ACQUIRE);
}
static inline int fl_claim(long* word, long expected, long desired) {
    return __atomic_compare_exchange_n(word, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
static inline void fl_count(long* done) {
    __atomic_add_fetch(done, 1, __ATOMIC_RELEASE);
}

/* Seconds on a monotonic clock. */
#if defined(_WIN32)
static inline double fl_now(void) {
    LARGE_INTEGER now, frequency;
    QueryPerformanceCounter(&now);
    QueryPerformanceFrequency(&frequency);
    return (double)now.QuadPart / (double)frequency.QuadPart;
}
#else
#include <time.h>
static inline double fl_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}
#endif

/* A wait for the blocks of a step that other threads are running, which
   take microseconds: spin FL_STEP_SPIN_SECONDS, checking the clock every
   FL_STEP_CLOCK_SPINS rounds, then yield the core (to the thread waited
   for, if it shares this core). Returns the seconds waited. */
#define FL_STEP_SPIN_SECONDS 20e-6
#define FL_STEP_CLOCK_SPINS 64
static inline double fl_wait_counted(long* done, long target) {
    if (__atomic_load_n(done, __ATOMIC_ACQUIRE) >= target)
        return 0.0;
    double start = fl_now(), now = start;
    int spins = 0;
    while (__atomic_load_n(done, __ATOMIC_ACQUIRE) < target) {
        if (now - start < FL_STEP_SPIN_SECONDS) {
            fl_pause();
            if (++spins % FL_STEP_CLOCK_SPINS == 0)
                now = fl_now();
        } else {
            fl_yield();
        }
    }
    return fl_now() - start;
}

#endif
