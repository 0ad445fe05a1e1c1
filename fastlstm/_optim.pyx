"""Fused optimizer updates: one pass over a variable and its slots.

NumPy's in-place operations make one pass over memory per operation, a
dozen for an Adam step, and for small batches updating a model's weights
then took as long as its forward and backward passes. Adam (and AdamW),
RMSprop and SGD with momentum take these; plain SGD is one NumPy pass. These loops make
one pass, doing on each element the floating-point operations of the
NumPy expressions they replace, in the same order and the same precision
(the constants rounded to the variable's dtype as NumPy rounds a Python
float), so the results are the same to the bit. This module is compiled
with the target's baseline flags: no FMA instructions, so no multiply and
add is fused into one rounding. A long variable is split into one block of
elements per thread of fastlstm's pool.
"""
from cython cimport floating
from libc.math cimport sqrt, sqrtf

from ._pool cimport run_blocks


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


def _check_lengths(Py_ssize_t n, **arrays):
    """The loops index every array up to the variable's length: refuse a
    shorter one rather than read past its end."""
    for name, array in arrays.items():
        if array is not None and array.shape[0] != n:
            raise ValueError(f"{name} must have the variable's {n} elements, got "
                             f"{array.shape[0]}")


cdef enum _Rule:
    ADAM = 0
    RMSPROP = 1
    SGD = 2


# One update, as its blocks read it: the arrays (of the variable's dtype;
# None is NULL) and the hyperparameters, each rounded to that dtype where
# the loop uses it.
ctypedef struct _Update:
    int rule
    bint double_precision, flag
    Py_ssize_t n, nblocks
    void* variable
    const void* gradient
    void* m
    void* v
    void* v_hat
    void* velocity
    void* average
    void* momentum_buffer
    double alpha, beta_1, beta_2, epsilon, learning_rate, rho, momentum


cdef void _update_block(void* ctx, Py_ssize_t k) noexcept nogil:
    """Block k of an update: its share of the elements."""
    cdef _Update* u = <_Update*>ctx
    cdef Py_ssize_t i0 = (k * u.n) // u.nblocks, i1 = ((k + 1) * u.n) // u.nblocks
    if u.double_precision:
        _update_range(u, i0, i1, <double*>NULL)
    else:
        _update_range(u, i0, i1, <float*>NULL)


cdef void _update_range(_Update* u, Py_ssize_t i0, Py_ssize_t i1,
                        floating* dtype_of) noexcept nogil:
    if u.rule == ADAM:
        _adam(u, i0, i1, dtype_of)
    elif u.rule == RMSPROP:
        _rmsprop(u, i0, i1, dtype_of)
    else:
        _sgd(u, i0, i1, dtype_of)


cdef void _run(_Update* u, Py_ssize_t n, bint double_precision, int num_threads) noexcept nogil:
    u.n, u.double_precision = n, double_precision
    u.nblocks = max(1, min(num_threads, n))
    run_blocks(_update_block, u, u.nblocks, num_threads)


cdef void _adam(_Update* u, Py_ssize_t i0, Py_ssize_t i1, floating* dtype_of) noexcept nogil:
    cdef floating c1 = <floating>(1.0 - u.beta_1)
    cdef floating c2 = <floating>(1.0 - u.beta_2)
    cdef floating eps = <floating>u.epsilon
    cdef floating a = <floating>u.alpha
    cdef floating g, s, mi, vi, root
    cdef floating* variable = <floating*>u.variable
    cdef const floating* gradient = <const floating*>u.gradient
    cdef floating* m = <floating*>u.m
    cdef floating* v = <floating*>u.v
    cdef floating* vh = <floating*>u.v_hat
    cdef Py_ssize_t i
    for i in range(i0, i1):
        g = gradient[i]
        s = g - m[i]
        s = s * c1
        mi = m[i] + s
        m[i] = mi
        s = g * g
        s = s - v[i]
        s = s * c2
        vi = v[i] + s
        v[i] = vi
        if vh != NULL:
            # np.maximum: NaN wins either way.
            if not (vh[i] >= vi or vh[i] != vh[i]):
                vh[i] = vi
            vi = vh[i]
        root = _sqrt(vi)
        root = root + eps
        s = mi / root
        s = s * a
        variable[i] = variable[i] - s


cdef void _rmsprop(_Update* u, Py_ssize_t i0, Py_ssize_t i1, floating* dtype_of) noexcept nogil:
    cdef floating r = <floating>u.rho
    cdef floating c = <floating>(1.0 - u.rho)
    cdef floating eps = <floating>u.epsilon
    cdef floating lr = <floating>u.learning_rate
    cdef floating mom = <floating>u.momentum
    cdef floating g, s, vel, avg, buf
    cdef floating* variable = <floating*>u.variable
    cdef const floating* gradient = <const floating*>u.gradient
    cdef floating* velocity = <floating*>u.velocity
    cdef floating* av = <floating*>u.average
    cdef floating* mb = <floating*>u.momentum_buffer
    cdef Py_ssize_t i
    for i in range(i0, i1):
        g = gradient[i]
        vel = velocity[i] * r
        s = g * g
        s = s * c
        vel = vel + s
        velocity[i] = vel
        if av != NULL:
            avg = av[i] * r
            avg = avg + g * c
            av[i] = avg
            s = avg * avg
            s = vel - s
        else:
            s = vel
        s = s + eps
        s = _sqrt(s)
        s = g / s
        s = s * lr
        if mb != NULL:
            buf = mb[i] * mom
            buf = buf + s
            mb[i] = buf
            variable[i] = variable[i] - buf
        else:
            variable[i] = variable[i] - s


cdef void _sgd(_Update* u, Py_ssize_t i0, Py_ssize_t i1, floating* dtype_of) noexcept nogil:
    cdef floating lr = <floating>u.learning_rate
    cdef floating mom = <floating>u.momentum
    cdef floating step, vel
    cdef floating* variable = <floating*>u.variable
    cdef const floating* gradient = <const floating*>u.gradient
    cdef floating* velocity = <floating*>u.velocity
    cdef Py_ssize_t i
    for i in range(i0, i1):
        step = gradient[i] * lr
        vel = velocity[i] * mom
        vel = vel - step
        velocity[i] = vel
        if u.flag:
            variable[i] = variable[i] + (mom * vel - step)
        else:
            variable[i] = variable[i] + vel


def adam(floating[::1] variable, const floating[::1] gradient, floating[::1] m,
         floating[::1] v, floating[::1] v_hat, double alpha, double beta_1, double beta_2,
         double epsilon, int num_threads):
    """One Adam step in place, as ``fastlstm.optimizers.Adam``'s NumPy update:
    ``m += (1 - beta_1) * (g - m)``, ``v += (1 - beta_2) * (g * g - v)``,
    ``w -= alpha * m / (sqrt(v) + epsilon)`` (with ``v_hat``, not None for
    amsgrad: ``v_hat = maximum(v_hat, v)`` under the root). Every array
    has the variable's length."""
    cdef Py_ssize_t n = variable.shape[0]
    cdef _Update u
    _check_lengths(n, gradient=gradient, m=m, v=v, v_hat=v_hat)
    if n == 0:
        return
    u.rule, u.variable, u.gradient, u.m, u.v = ADAM, &variable[0], &gradient[0], &m[0], &v[0]
    u.v_hat = &v_hat[0] if v_hat is not None else NULL
    u.alpha, u.beta_1, u.beta_2, u.epsilon = alpha, beta_1, beta_2, epsilon
    with nogil:
        _run(&u, n, floating is double, num_threads)


def rmsprop(floating[::1] variable, const floating[::1] gradient, floating[::1] velocity,
            floating[::1] average, floating[::1] momentum_buffer, double learning_rate,
            double rho, double momentum, double epsilon, int num_threads):
    """One RMSprop step in place, as ``fastlstm.optimizers.RMSprop``'s NumPy
    update: ``velocity = rho * velocity + (1 - rho) * g * g``; centered (an
    ``average`` given): ``average = rho * average + (1 - rho) * g`` and
    ``velocity - average ** 2`` under the root; ``increment =
    learning_rate * g / sqrt(... + epsilon)``; with a ``momentum_buffer``:
    ``buffer = momentum * buffer + increment``, ``w -= buffer``, else
    ``w -= increment``."""
    cdef Py_ssize_t n = variable.shape[0]
    cdef _Update u
    _check_lengths(n, gradient=gradient, velocity=velocity, average=average,
                   momentum_buffer=momentum_buffer)
    if n == 0:
        return
    u.rule, u.variable, u.gradient, u.velocity = RMSPROP, &variable[0], &gradient[0], &velocity[0]
    u.average = &average[0] if average is not None else NULL
    u.momentum_buffer = &momentum_buffer[0] if momentum_buffer is not None else NULL
    u.learning_rate, u.rho, u.momentum, u.epsilon = learning_rate, rho, momentum, epsilon
    with nogil:
        _run(&u, n, floating is double, num_threads)


def sgd(floating[::1] variable, const floating[::1] gradient, floating[::1] velocity,
        double learning_rate, double momentum, bint nesterov, int num_threads):
    """One SGD step with momentum in place, as ``fastlstm.optimizers.SGD``'s
    NumPy update: ``step = learning_rate * g``, ``velocity = momentum *
    velocity - step``, then ``w += momentum * velocity - step`` (nesterov)
    or ``w += velocity``."""
    cdef Py_ssize_t n = variable.shape[0]
    cdef _Update u
    _check_lengths(n, gradient=gradient, velocity=velocity)
    if n == 0:
        return
    u.rule, u.variable, u.gradient, u.velocity = SGD, &variable[0], &gradient[0], &velocity[0]
    u.learning_rate, u.momentum, u.flag = learning_rate, momentum, nesterov
    with nogil:
        _run(&u, n, floating is double, num_threads)
