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
add is fused into one rounding.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf


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


def adam(floating[::1] variable, const floating[::1] gradient, floating[::1] m,
         floating[::1] v, floating[::1] v_hat, double alpha, double beta_1, double beta_2,
         double epsilon, int num_threads):
    """One Adam step in place, as ``fastlstm.optimizers.Adam``'s NumPy update:
    ``m += (1 - beta_1) * (g - m)``, ``v += (1 - beta_2) * (g * g - v)``,
    ``w -= alpha * m / (sqrt(v) + epsilon)`` (with ``v_hat``, not None for
    amsgrad: ``v_hat = maximum(v_hat, v)`` under the root). Every array
    has the variable's length."""
    cdef Py_ssize_t n = variable.shape[0], i
    cdef floating c1 = <floating>(1.0 - beta_1)
    cdef floating c2 = <floating>(1.0 - beta_2)
    cdef floating eps = <floating>epsilon
    cdef floating a = <floating>alpha
    cdef floating g, s, mi, vi, root
    cdef bint amsgrad = v_hat is not None
    cdef floating* vh = &v_hat[0] if amsgrad else NULL
    _check_lengths(n, gradient=gradient, m=m, v=v, v_hat=v_hat)
    with nogil:
        for i in prange(n, num_threads=max(1, num_threads), schedule="static"):
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
            if amsgrad:
                # np.maximum: NaN wins either way.
                if not (vh[i] >= vi or vh[i] != vh[i]):
                    vh[i] = vi
                vi = vh[i]
            root = _sqrt(vi)
            root = root + eps
            s = mi / root
            s = s * a
            variable[i] = variable[i] - s


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
    cdef Py_ssize_t n = variable.shape[0], i
    cdef floating r = <floating>rho
    cdef floating c = <floating>(1.0 - rho)
    cdef floating eps = <floating>epsilon
    cdef floating lr = <floating>learning_rate
    cdef floating mom = <floating>momentum
    cdef floating g, s, vel, avg, buf
    cdef bint centered = average is not None, has_momentum = momentum_buffer is not None
    cdef floating* av = &average[0] if centered else NULL
    cdef floating* mb = &momentum_buffer[0] if has_momentum else NULL
    _check_lengths(n, gradient=gradient, velocity=velocity, average=average,
                   momentum_buffer=momentum_buffer)
    with nogil:
        for i in prange(n, num_threads=max(1, num_threads), schedule="static"):
            g = gradient[i]
            vel = velocity[i] * r
            s = g * g
            s = s * c
            vel = vel + s
            velocity[i] = vel
            if centered:
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
            if has_momentum:
                buf = mb[i] * mom
                buf = buf + s
                mb[i] = buf
                variable[i] = variable[i] - buf
            else:
                variable[i] = variable[i] - s


def sgd(floating[::1] variable, const floating[::1] gradient, floating[::1] velocity,
        double learning_rate, double momentum, bint nesterov, int num_threads):
    """One SGD step with momentum in place, as ``fastlstm.optimizers.SGD``'s
    NumPy update: ``step = learning_rate * g``, ``velocity = momentum *
    velocity - step``, then ``w += momentum * velocity - step`` (nesterov)
    or ``w += velocity``."""
    cdef Py_ssize_t n = variable.shape[0], i
    cdef floating lr = <floating>learning_rate
    cdef floating mom = <floating>momentum
    cdef floating step, vel
    _check_lengths(n, gradient=gradient, velocity=velocity)
    with nogil:
        for i in prange(n, num_threads=max(1, num_threads), schedule="static"):
            step = gradient[i] * lr
            vel = velocity[i] * mom
            vel = vel - step
            velocity[i] = vel
            if nesterov:
                variable[i] = variable[i] + (mom * vel - step)
            else:
                variable[i] = variable[i] + vel
