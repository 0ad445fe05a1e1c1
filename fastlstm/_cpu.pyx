"""What the CPU can do, asked of the CPU itself (and of the OS, which must
save the wider registers). This module loads no BLAS, so it can be asked
before a BLAS library is chosen and initialised."""

cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define FL_CPU_CHECK(name) (__builtin_cpu_init(), __builtin_cpu_supports(name))
    #else
    #define FL_CPU_CHECK(name) 0
    #endif
    static int fl_has_avx2(void) { return FL_CPU_CHECK("avx2") && FL_CPU_CHECK("fma"); }
    static int fl_has_avx512f(void) { return FL_CPU_CHECK("avx512f"); }
    static int fl_has_avx512bw(void) { return FL_CPU_CHECK("avx512bw"); }
    static int fl_has_avx512dq(void) { return FL_CPU_CHECK("avx512dq"); }
    static int fl_has_avx512vl(void) { return FL_CPU_CHECK("avx512vl"); }
    static int fl_has_avx512cd(void) { return FL_CPU_CHECK("avx512cd"); }
    static int fl_has_avx512bf16(void) { return FL_CPU_CHECK("avx512bf16"); }
    static int fl_has_avx512vnni(void) { return FL_CPU_CHECK("avx512vnni"); }
    #if defined(__clang__) || !defined(__GNUC__) || __GNUC__ >= 11
    static int fl_has_avxvnni(void) { return FL_CPU_CHECK("avxvnni"); }
    #else
    static int fl_has_avxvnni(void) { return 0; }
    #endif
    """
    int fl_has_avx2() nogil
    int fl_has_avx512f() nogil
    int fl_has_avx512bw() nogil
    int fl_has_avx512dq() nogil
    int fl_has_avx512vl() nogil
    int fl_has_avx512cd() nogil
    int fl_has_avx512bf16() nogil
    int fl_has_avx512vnni() nogil
    int fl_has_avxvnni() nogil
    # Defined by the C code Cython generates: 0xMMmmpp.. of the Cython version.
    const long CYTHON_HEX_VERSION


def cpu_features():
    """The instruction-set extensions fastlstm cares about, as ``{name: bool}``.

    All are ``False`` on CPUs that are not x86.
    """
    return {
        "avx2": bool(fl_has_avx2()),
        "avx512f": bool(fl_has_avx512f()),
        "avx512bw": bool(fl_has_avx512bw()),
        "avx512dq": bool(fl_has_avx512dq()),
        "avx512vl": bool(fl_has_avx512vl()),
        "avx512cd": bool(fl_has_avx512cd()),
        "avx512bf16": bool(fl_has_avx512bf16()),
        # The int8 products' dot-product instructions (vpdpbusd).
        "avx512vnni": bool(fl_has_avx512vnni()),
        "avxvnni": bool(fl_has_avxvnni()),
    }


def cython_version():
    """The version of Cython that compiled fastlstm's extensions."""
    return f"{(CYTHON_HEX_VERSION >> 24) & 0xff}.{(CYTHON_HEX_VERSION >> 16) & 0xff}." \
           f"{(CYTHON_HEX_VERSION >> 8) & 0xff}"
