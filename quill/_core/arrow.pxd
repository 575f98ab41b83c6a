# The C-level interface of quill/_core/arrow.pyx (the Arrow ABI structs and TokenBatch export),
# cimported by quill/_core/tokens.pyx and quill/_core/arrow_import.pyx.

from libc.stdint cimport int64_t

from quill._core.tokens cimport TokenColumns


cdef extern from "arrow_abi.h" nogil:
    int ARROW_FLAG_NULLABLE

    struct ArrowSchema:
        const char *format
        const char *name
        const char *metadata
        int64_t flags
        int64_t n_children
        ArrowSchema **children
        ArrowSchema *dictionary
        void (*release)(ArrowSchema *) noexcept nogil
        void *private_data

    struct ArrowArray:
        int64_t length
        int64_t null_count
        int64_t offset
        int64_t n_buffers
        int64_t n_children
        const void **buffers
        ArrowArray **children
        ArrowArray *dictionary
        void (*release)(ArrowArray *) noexcept nogil
        void *private_data

    struct ArrowArrayStream:
        int (*get_schema)(ArrowArrayStream *, ArrowSchema *out) noexcept nogil
        int (*get_next)(ArrowArrayStream *, ArrowArray *out) noexcept nogil
        const char *(*get_last_error)(ArrowArrayStream *) noexcept nogil
        void (*release)(ArrowArrayStream *) noexcept nogil
        void *private_data


# Token flags (docs/protocol.md section 2): the bits of TokenColumns.flags (quill/_core/tokens.pxd).
cdef enum:
    TOKEN_HAS_TEXT = 0x01
    TOKEN_HAS_LOGPROB = 0x02
    TOKEN_IS_SPECIAL = 0x04


cdef tuple export_token_columns(const TokenColumns *columns, object owner, dict metadata)
cdef object token_schema(dict metadata)
