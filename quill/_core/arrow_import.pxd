# The C-level interface of quill/_core/arrow_import.pyx, cimported by quill/_core/tokens.pyx.

from libc.stdint cimport int64_t, uint8_t, uint32_t

from quill._core.tokens cimport TokenColumns


cdef class TokenChunk:
    """One imported Arrow record batch as TokenColumns, valid while this object lives."""
    cdef TokenColumns columns
    cdef object _source           # the imported Arrow array that zero-copy pointers point into
    cdef uint8_t *_flags          # owned copies (NULL when not needed)
    cdef uint32_t *_logprob_bits
    cdef int64_t *_offsets
    cdef unsigned char *_text


cdef tuple import_token_chunks(object source)
