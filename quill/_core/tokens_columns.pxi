# Included by quill/_core/tokens.pyx: _BatchColumns, a TokenBatch's columns as lists, numpy arrays, bytes and Arrow.


@cython.auto_pickle(False)   # TokenBatch pickles itself (__reduce__)
cdef class _BatchColumns(_BatchStorage):
    """The column views of a TokenBatch (its base class, never used alone; see TokenBatch):
    every token's field as a list, a new numpy array or bytes, without building Token objects,
    and the batch as an Arrow record batch (zero-copy, from a pin). ``TokenBatch.from_arrow``
    reads one back."""

    @cython.critical_section
    def text(self):
        """The texts of all tokens concatenated (tokens without text add nothing).

        >>> TokenBatch.from_tokens([Token(1, 0, "Hel"), Token(2, 1), Token(3, 2, "lo")]).text()
        'Hello'
        """
        return PyUnicode_DecodeUTF8(<const char *>self._text, self._text_size, NULL)

    @cython.critical_section
    def texts(self):
        """The text of every token (None where absent), without building Token objects."""
        cdef Py_ssize_t i
        cdef PinnedBatch pin = _pin_locked(self)   # before allocating: a GC pass may run other threads
        cdef const TokenColumns *c = &pin.columns
        cdef list out = PyList_New(c.count)
        for i in range(c.count):
            if c.flags[i] & HAS_TEXT:
                text = PyUnicode_DecodeUTF8(<const char *>c.text + c.text_offsets[i],
                                            c.text_offsets[i + 1] - c.text_offsets[i], NULL)
            else:
                text = None
            Py_INCREF(text)
            PyList_SET_ITEM(out, i, text)
        return out

    def token_ids(self):
        """The ids as a list of int."""
        return self.ids_array().tolist()

    def positions(self):
        """The positions as a list of int."""
        return self.positions_array().tolist()

    @cython.final
    cdef cnp.ndarray _new_array(self, int typenum):
        cdef cnp.npy_intp n = self._count
        return cnp.PyArray_SimpleNew(1, &n, typenum)

    @cython.critical_section
    def ids_array(self):
        """The ids as a new uint32 numpy array."""
        arr = self._new_array(cnp.NPY_UINT32)
        if self._count:   # an empty batch may have no columns: memcpy from NULL is undefined (UBSan)
            memcpy(cnp.PyArray_DATA(arr), self._ids, self._count * 4)
        return arr

    @cython.critical_section
    def positions_array(self):
        """The positions as a new uint32 numpy array."""
        arr = self._new_array(cnp.NPY_UINT32)
        if self._count:
            memcpy(cnp.PyArray_DATA(arr), self._positions, self._count * 4)
        return arr

    @cython.critical_section
    def logprobs_array(self):
        """The logprobs as a new float32 numpy array holding the exact wire bits; NaN where a token
        has no logprob (use ``has_logprob_array()`` when NaN can also be a real value).

        >>> TokenBatch.from_tokens([Token(1, 0, logprob=-0.5), Token(2, 1)]).logprobs_array()
        array([-0.5,  nan], dtype=float32)
        """
        cdef Py_ssize_t i
        arr = self._new_array(cnp.NPY_FLOAT32)
        cdef uint32_t *out = <uint32_t *>cnp.PyArray_DATA(arr)
        for i in range(self._count):
            out[i] = self._logprob_bits[i] if self._flags[i] & HAS_LOGPROB else QUIET_NAN_BITS
        return arr

    @cython.final
    cdef cnp.ndarray _flag_array(self, uint8_t flag):
        cdef Py_ssize_t i
        arr = self._new_array(cnp.NPY_BOOL)
        cdef uint8_t *out = <uint8_t *>cnp.PyArray_DATA(arr)
        for i in range(self._count):
            out[i] = (self._flags[i] & flag) != 0
        return arr

    @cython.critical_section
    def has_logprob_array(self):
        """A bool numpy array: True where the token carries a logprob."""
        return self._flag_array(HAS_LOGPROB)

    @cython.critical_section
    def has_text_array(self):
        """A bool numpy array: True where the token carries a text."""
        return self._flag_array(HAS_TEXT)

    @cython.critical_section
    def is_special_array(self):
        """A bool numpy array: True where the token is special."""
        return self._flag_array(IS_SPECIAL)

    @cython.critical_section
    def text_offsets_array(self):
        """int64 numpy array of ``len(batch) + 1`` offsets into ``text_bytes()``: token i's text
        is ``text_bytes()[off[i]:off[i + 1]]`` (empty where it has none)."""
        cdef cnp.npy_intp n = self._count + 1
        arr = cnp.PyArray_ZEROS(1, &n, cnp.NPY_INT64, 0)
        if self._count:
            memcpy(cnp.PyArray_DATA(arr), self._text_offsets, n * 8)
        return arr

    @cython.critical_section
    def text_bytes(self):
        """All token texts concatenated, as UTF-8 bytes."""
        return PyBytes_FromStringAndSize(<const char *>self._text, self._text_size)

    # -- Arrow (the PyCapsule Interface: quill/_core/arrow.pyx exports, arrow_import.pyx imports) --

    @cython.final
    cdef dict _arrow_metadata(self):
        cdef dict metadata = {"is_final": "true" if self._is_final else "false"}
        if self._has_sequence_id:
            metadata["sequence_id"] = str(self._sequence_id)
        return metadata

    @cython.critical_section
    def __arrow_c_schema__(self):
        """The batch's Arrow schema (an "arrow_schema" PyCapsule): a record batch of ``id`` uint32,
        ``position`` uint32, ``logprob`` float32 (null where a token has none), ``text``
        large_utf8 (null where a token has none; large because the batch's offsets are int64)
        and ``is_special`` bool, with ``sequence_id`` (when set) and ``is_final`` ("true" or
        "false") as schema metadata."""
        return token_schema(self._arrow_metadata())

    @cython.critical_section
    def __arrow_c_array__(self, requested_schema=None):
        """The batch as an Arrow record batch: ("arrow_schema", "arrow_array") PyCapsules.

        Not copied: ids, positions, logprob values, text offsets and text bytes are the batch's
        own memory. Copied: three bitmaps (logprob and text validity, is_special values), which
        Arrow stores as bits. The arrays hold a ``PinnedBatch`` of the batch as it was at this
        call: they stay valid after the batch is dropped, and a later mutation moves the batch
        onto a copy instead of changing them. ``requested_schema`` is accepted and not used (the
        PyCapsule Interface makes it a best-effort request).

        >>> schema, array = TokenBatch.from_tokens([Token(7, 0, "Hi")]).__arrow_c_array__()
        >>> type(array).__name__
        'PyCapsule'
        """
        cdef PinnedBatch pin = _pin_locked(self)
        return export_token_columns(&pin.columns, pin, self._arrow_metadata())

    @cython.critical_section
    def __arrow_c_stream__(self, requested_schema=None):
        """The batch as a one-batch Arrow stream (an "arrow_array_stream" PyCapsule), exported as
        ``__arrow_c_array__`` exports it: what ``pyarrow.table(batch)``,
        ``polars.DataFrame(batch)`` and DuckDB's ``FROM batch`` read."""
        return token_batch_stream((self,), self._arrow_metadata())
