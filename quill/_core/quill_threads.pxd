# The free-threading helpers of quill_threads.h (docs/memory-safety.md, "Free-threaded CPython").
cdef extern from "quill_threads.h":
    bint QUILL_FREE_THREADED   # 1 on a free-threaded CPython build, 0 with the GIL
    void quill_atomic_add_ssize(Py_ssize_t *p, Py_ssize_t v) noexcept nogil
    Py_ssize_t quill_atomic_load_ssize(Py_ssize_t *p) noexcept nogil
    bint quill_try_claim(bint *flag) noexcept nogil
    void quill_release_claim(bint *flag) noexcept nogil
