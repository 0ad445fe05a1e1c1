/* fastlstm's threads: who runs (OpenMP or one thread) and how one thread
   waits for another's progress without holding a core it needs. */
#ifndef FASTLSTM_FL_SYNC_H
#define FASTLSTM_FL_SYNC_H

#ifdef _OPENMP
#define FL_OPENMP 1
#else
#define FL_OPENMP 0
#endif

/* The threads of a pass split by units meet after every step: each adds
   one to a shared counter, then waits until it reaches ``target`` (the
   threads times the steps so far). A waiting thread spins a bounded
   number of times, then yields its core, so that a thread the OS has
   not scheduled (on a busy machine) gets to run instead of the spinning
   one burning a whole time slice. */
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
#ifdef _OPENMP
#include <omp.h>
#define fl_thread_num() omp_get_thread_num()
#define fl_team_size() omp_get_num_threads()
#else
#define fl_thread_num() 0
#define fl_team_size() 1
#endif
#define FL_SPINS 2000
/* Wait until *done reaches target: spin a bounded number of times,
   then yield the core. The pipelined stack's threads hand work over
   with it: a producer publishes how many steps of a layer are done. */
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
static inline void fl_arrive_and_wait(long* arrived, long target) {
    __atomic_add_fetch(arrived, 1, __ATOMIC_ACQ_REL);
    fl_wait_for(arrived, target);
}

#endif
