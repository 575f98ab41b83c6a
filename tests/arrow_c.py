"""A hand-built Arrow C data producer (ctypes), to feed quill's import side structs that no
well-behaved library would export: wrong buffer or child counts, NULL buffers, lying null counts,
decreasing offsets, released arrays. Used by tests/test_arrow.py and tests/fuzz/fuzz_arrow_import.py.

Every buffer is allocated as large as the C data interface says it is (from the length, the
offset and, for strings, the last offset), so a reader that keeps to the interface never reads
outside it: what the structs say may be wrong, the memory behind them is real.

>>> source = RawSource(Schema(b"+s", children=[Schema(b"I", b"id")]),
...                    Array(2, buffers=[None], children=[Array(2, buffers=[None, u32(7, 8)])]))
>>> capsules = source.__arrow_c_array__()
"""

import ctypes
import struct
import sys



class ArrowSchema(ctypes.Structure):
    pass


class ArrowArray(ctypes.Structure):
    pass


ReleaseSchema = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowSchema))
ReleaseArray = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowArray))

ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_void_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowSchema))), ("dictionary", ctypes.POINTER(ArrowSchema)),
    ("release", ReleaseSchema), ("private_data", ctypes.c_void_p),
]
ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64), ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowArray))), ("dictionary", ctypes.POINTER(ArrowArray)),
    ("release", ReleaseArray), ("private_data", ctypes.c_void_p),
]


@ReleaseSchema
def _release_schema(schema):
    schema.contents.release = ReleaseSchema()   # the memory belongs to the RawSource


@ReleaseArray
def _release_array(array):
    array.contents.release = ReleaseArray()


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
SCHEMA_NAME = b"arrow_schema"
ARRAY_NAME = b"arrow_array"


def u32(*values):
    return struct.pack(f"<{len(values)}I", *values)


def i32(*values):
    return struct.pack(f"<{len(values)}i", *values)


def i64(*values):
    return struct.pack(f"<{len(values)}q", *values)


def bits(*flags):
    """An Arrow bitmap (least significant bit first) of the given truth values."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def metadata(pairs):
    """Arrow's metadata encoding of a dict of str to str."""
    out = [struct.pack("=i", len(pairs))]
    for key, value in pairs.items():
        for text in (key.encode(), value.encode()):
            out.append(struct.pack("=i", len(text)) + text)
    return b"".join(out)


class Schema:
    def __init__(self, format, name=b"", meta=None, children=(), dictionary=None, flags=0, released=False):
        self.format, self.name, self.meta, self.flags = format, name, meta, flags
        self.children, self.dictionary, self.released = list(children), dictionary, released


class Array:
    """``buffers``: bytes (copied into memory of that size) or None (a NULL pointer); the count
    of the list is n_buffers unless ``n_buffers`` says otherwise (the list is padded with NULLs)."""

    def __init__(self, length, buffers=(), children=(), null_count=0, offset=0, n_buffers=None,
                 n_children=None, dictionary=None, released=False):
        self.length, self.null_count, self.offset = length, null_count, offset
        self.buffers, self.children, self.dictionary, self.released = list(buffers), list(children), dictionary, released
        self.n_buffers = len(self.buffers) if n_buffers is None else n_buffers
        self.n_children = len(self.children) if n_children is None else n_children


class RawSource:
    """An object with ``__arrow_c_array__`` over structs built from a Schema and an Array; each
    call builds fresh structs (a consumer moves them out and releases them). The memory lives as
    long as this object."""

    def __init__(self, schema, array):
        self.schema, self.array = schema, array
        self._keep = []

    def _bytes(self, data):
        buffer = ctypes.create_string_buffer(data, max(len(data), 1))
        self._keep.append(buffer)
        return ctypes.cast(buffer, ctypes.c_void_p)

    def _schema(self, spec, out):
        out.format = spec.format
        out.name = spec.name
        out.metadata = self._bytes(spec.meta) if spec.meta is not None else None
        out.flags = spec.flags
        out.n_children = len(spec.children)
        children = (ctypes.POINTER(ArrowSchema) * max(len(spec.children), 1))()
        for i, child in enumerate(spec.children):
            children[i] = ctypes.pointer(self._schema(child, ArrowSchema()))
        out.children = ctypes.cast(children, ctypes.POINTER(ctypes.POINTER(ArrowSchema))) if spec.children else None
        out.dictionary = ctypes.pointer(self._schema(spec.dictionary, ArrowSchema())) if spec.dictionary else None
        out.release = ReleaseSchema() if spec.released else _release_schema
        self._keep.extend([out, children, spec.format, spec.name])
        return out

    def _array(self, spec, out):
        out.length, out.null_count, out.offset = spec.length, spec.null_count, spec.offset
        out.n_buffers, out.n_children = spec.n_buffers, spec.n_children
        buffers = (ctypes.c_void_p * max(spec.n_buffers, len(spec.buffers), 1))()
        for i, data in enumerate(spec.buffers):
            buffers[i] = self._bytes(data).value if data is not None else None
        out.buffers = ctypes.cast(buffers, ctypes.POINTER(ctypes.c_void_p))
        children = (ctypes.POINTER(ArrowArray) * max(spec.n_children, len(spec.children), 1))()
        for i, child in enumerate(spec.children):
            children[i] = ctypes.pointer(self._array(child, ArrowArray()))
        out.children = ctypes.cast(children, ctypes.POINTER(ctypes.POINTER(ArrowArray)))
        out.dictionary = ctypes.pointer(self._array(spec.dictionary, ArrowArray())) if spec.dictionary else None
        out.release = ReleaseArray() if spec.released else _release_array
        self._keep.extend([out, buffers, children])
        return out

    def __arrow_c_array__(self, requested_schema=None):
        schema = self._schema(self.schema, ArrowSchema())
        array = self._array(self.array, ArrowArray())
        return (_capsule_new(ctypes.addressof(schema), SCHEMA_NAME, None),
                _capsule_new(ctypes.addressof(array), ARRAY_NAME, None))


def token_source(columns, length, meta=None, offset=0, null_count=0, validity=None):
    """A RawSource of a record batch: ``columns`` is a list of (name, format, Array)."""
    schema = Schema(b"+s", meta=meta, children=[Schema(fmt, name.encode()) for name, fmt, _ in columns])
    return RawSource(schema, Array(length, buffers=[validity], children=[array for _, _, array in columns],
                                   offset=offset, null_count=null_count))


assert sys.byteorder == "little", "the helpers pack little-endian buffers"
