# The C-level API of quill._core.tokens for other compiled modules (exporters, GIL-free readers):
#
#     from quill._core.tokens cimport PinnedBatch, TokenColumns, pin_batch
#
#     cdef PinnedBatch pin = pin_batch(batch)
#     cdef const TokenColumns *c = &pin.columns
#     # c.ids[0..c.count), c.text_offsets[0..c.count], c.text[0..c.text_size) ...: valid and
#     # unchanged, with or without the GIL, for as long as `pin` is referenced (hand it to the
#     # consumer as the owner of the memory, e.g. an Arrow array's release callback).
#
# See the _BatchStorage docstring in tokens_storage.pxi for the storage rules behind it.

from libc.stdint cimport int64_t, uint8_t, uint32_t


ctypedef struct TokenColumns:
    Py_ssize_t count               # tokens
    const int64_t *text_offsets    # count + 1 entries: token i's text is text[off[i]:off[i + 1]]
    const uint32_t *ids
    const uint32_t *positions
    const uint32_t *logprob_bits   # 0 where the token has no logprob
    const uint8_t *flags           # bit 0 has text, bit 1 has logprob, bit 2 special
    const unsigned char *text      # UTF-8; NULL when no token has had text
    Py_ssize_t text_size
    Py_ssize_t text_capacity       # readable bytes at text (>= text_size)
    Py_ssize_t wire_size           # encoded size of the tokens (without the batch header)


cdef class PinnedBatch:
    cdef TokenColumns columns
    cdef object _columns_owner     # the batch's _Columns (or None), pinned
    cdef object _text_owner        # the batch's _TextBuffer (or None), pinned


cpdef PinnedBatch pin_batch(batch)
