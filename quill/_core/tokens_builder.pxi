# Included by quill/_core/tokens.pyx: TokenBatchBuilder.

# ---------------------------------------------------------------------------------------------
# TokenBatchBuilder


@cython.final
cdef class TokenBatchBuilder:
    """Groups a stream of tokens into batches of at most ``max_size`` tokens.

    ``push`` returns a full batch as soon as it has ``max_size`` tokens, ``flush`` returns the
    pending tokens early (None if there are none), and ``finish`` ends the stream: it returns
    the pending tokens as a batch marked ``is_final`` -- an empty one when nothing is pending,
    so the receiver always sees the end -- and closes the builder (any later call raises
    RuntimeError). Every batch gets the builder's ``sequence_id``. Calls from several threads
    at once are serialised (the builder's critical section): each token lands in exactly one
    batch.

    >>> builder = TokenBatchBuilder(max_size=2, sequence_id=5)
    >>> builder.push(Token(1, 0)) is None
    True
    >>> builder.push(Token(2, 1))
    TokenBatch(sequence_id=5, is_final=False, tokens=2)
    >>> builder.push(Token(3, 2)); builder.finish()
    TokenBatch(sequence_id=5, is_final=True, tokens=1)
    """

    cdef TokenBatch _pending
    cdef Py_ssize_t _max_size
    cdef object _sequence_id
    cdef bint _finished

    def __init__(self, Py_ssize_t max_size=32, sequence_id=None):
        if max_size < 1 or max_size > MAX_BATCH_TOKENS:
            raise ValueError(f"max_size must be in 1..65535, got {max_size}")
        self._max_size = max_size
        self._sequence_id = sequence_id
        self._pending = TokenBatch(sequence_id)
        self._finished = False

    @property
    def max_size(self):
        """The number of tokens that makes a batch full."""
        return self._max_size

    @property
    def sequence_id(self):
        """The sequence id given to every batch (or None)."""
        return self._sequence_id

    @cython.critical_section
    def __len__(self):
        """The number of tokens pending (pushed but not yet returned in a batch)."""
        return self._pending._count

    cdef int _check_open(self) except -1:
        if self._finished:
            raise RuntimeError("TokenBatchBuilder.finish() was already called")
        return 0

    cdef TokenBatch _take(self):
        cdef TokenBatch batch = self._pending
        self._pending = TokenBatch(self._sequence_id)
        return batch

    @cython.critical_section
    def push(self, Token token not None):
        """Add a token; return the full batch when this token fills it, else None."""
        self._check_open()
        self._pending._push_token(token)
        if self._pending._count >= self._max_size:
            return self._take()
        return None

    @cython.critical_section
    def flush(self):
        """Return the pending tokens as a (non-final) batch, or None when nothing is pending."""
        self._check_open()
        if self._pending._count == 0:
            return None
        return self._take()

    @cython.critical_section
    def finish(self):
        """Return the pending tokens (possibly none) as the final batch and close the builder."""
        self._check_open()
        batch = self._take()
        batch._is_final = True
        self._finished = True
        return batch
