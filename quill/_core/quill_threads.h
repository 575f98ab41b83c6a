/* Free-threading helpers for quill's compiled modules (docs/memory-safety.md, "Free-threaded
 * CPython").
 *
 * On a free-threaded CPython (Py_GIL_DISABLED, 3.13t and later) the counters and flags that
 * several threads touch without holding one object's critical section are atomic, through
 * CPython's own portable atomics (Include/cpython/pyatomic.h: GCC, Clang and MSVC). With the GIL,
 * plain loads and stores are enough: every caller holds the GIL. QUILL_FREE_THREADED is a
 * compile-time constant, so the branch the build does not need is compiled out.
 */
#ifndef QUILL_THREADS_H
#define QUILL_THREADS_H

#include <Python.h>

#ifdef Py_GIL_DISABLED
#define QUILL_FREE_THREADED 1
static inline void quill_atomic_add_ssize(Py_ssize_t *p, Py_ssize_t v) { (void)_Py_atomic_add_ssize(p, v); }
static inline Py_ssize_t quill_atomic_load_ssize(Py_ssize_t *p) { return _Py_atomic_load_ssize(p); }
/* 1 when the flag was 0 and is now 1 (this thread claimed it), 0 when another thread holds it. */
static inline int quill_try_claim(int *flag) { int expected = 0; return _Py_atomic_compare_exchange_int(flag, &expected, 1); }
static inline void quill_release_claim(int *flag) { _Py_atomic_store_int(flag, 0); }
#else
#define QUILL_FREE_THREADED 0
static inline void quill_atomic_add_ssize(Py_ssize_t *p, Py_ssize_t v) { *p += v; }
static inline Py_ssize_t quill_atomic_load_ssize(Py_ssize_t *p) { return *p; }
static inline int quill_try_claim(int *flag) { if (*flag) return 0; *flag = 1; return 1; }
static inline void quill_release_claim(int *flag) { *flag = 0; }
#endif

#endif
