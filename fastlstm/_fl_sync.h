/* How one of fastlstm's threads waits for another's progress without
   holding a core it needs: the pipelined stack's layers, each a block of
   one pool job, hand their steps over with these. FL_OPENMP says whether
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

#endif
