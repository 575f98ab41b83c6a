# Included by arrow_import.pyx: a tensor from an Arrow source (fixed_shape_tensor, fixed-size
# lists, or a plain array), checked like the token columns.

def import_tensor(source):
    """(shape, dtype name, name, data) of the tensor in an Arrow source: an
    ``arrow.fixed_shape_tensor`` array (shape ``(rows, *tensor shape)``), a plain fixed-size
    list (``(rows, list size)``) or a primitive array (``(rows,)``), alone or as the single
    column of a record batch. ``data`` is an ArrowBuffer over the Arrow memory when there is one
    chunk (zero copy; read-only), else a bytearray holding the chunks' values; bool values are
    unpacked from Arrow's bitmap into bytes (a copy)."""
    cdef _Schema schema
    cdef const ArrowSchema *field
    cdef list arrays
    schema, arrays = read_source(source, "Tensor.from_arrow")
    field = &schema.c
    fmt = schema_format(field, "the schema")
    in_struct = fmt == "+s"
    if in_struct:
        if field.n_children != 1:
            raise TypeError(f"Tensor.from_arrow expects an array or a one-column record batch; this record "
                            f"batch has {field.n_children} columns")
        field = field.children[0]
        fmt = schema_format(field, "the column")
    name = schema_name(field) or None
    row_shape, list_size, value_fmt = tensor_layout(field, fmt)
    pieces = [tensor_values(array, in_struct, list_size, value_fmt) for array in arrays]
    rows = sum(piece[0] for piece in pieces)
    shape = (rows,) if row_shape is None else (rows, *row_shape)
    if len(pieces) == 1 and value_fmt != "b":
        data = pieces[0][1]
    else:
        data = bytearray(b"".join(bytes(piece[1]) for piece in pieces))
    return shape, DTYPE_NAMES[value_fmt], name, data


cdef tuple tensor_layout(const ArrowSchema *field, str fmt):
    """(row shape or None, list size or -1 for a primitive array, value format) from a tensor
    field's schema."""
    metadata = schema_metadata(field, "the tensor field")
    extension = metadata.get("ARROW:extension:name")
    if field.dictionary != NULL:
        raise TypeError("Tensor.from_arrow: the array is dictionary-encoded")
    if extension is not None and extension != "arrow.fixed_shape_tensor":
        raise TypeError(f"Tensor.from_arrow reads the arrow.fixed_shape_tensor extension, not {extension!r}")
    if not fmt.startswith("+w:"):
        if extension is not None:
            raise TypeError(f"arrow.fixed_shape_tensor over Arrow type {type_name(fmt)}; its storage is a fixed-size list")
        return None, -1, value_format(fmt)
    size_text = fmt[3:]
    if not (size_text.isascii() and size_text.isdigit() and int(size_text) <= INT32_MAX) or field.n_children != 1:
        raise DecodeError(f"malformed fixed-size list format {fmt!r}")
    list_size = int(size_text)
    value_fmt = value_format(schema_format(field.children[0], "the tensor values"))
    if field.children[0].dictionary != NULL:
        raise TypeError("Tensor.from_arrow: the tensor values are dictionary-encoded")
    if extension is None:
        return (list_size,), list_size, value_fmt
    try:
        params = json.loads(metadata.get("ARROW:extension:metadata", ""))
        shape = params["shape"]
        if not (type(shape) is list and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(shape)
    except (ValueError, TypeError, KeyError):
        raise DecodeError("arrow.fixed_shape_tensor metadata is not JSON with a 'shape' list of "
                          "non-negative integers") from None
    if math.prod(shape) != list_size:
        raise DecodeError(f"arrow.fixed_shape_tensor shape {shape} holds {math.prod(shape)} values, "
                          f"but its list size is {list_size}")
    permutation = params.get("permutation")
    if permutation is not None and permutation != list(range(len(shape))):
        raise TypeError(f"Tensor.from_arrow reads row-major tensors; this one has permutation {permutation}")
    return tuple(shape), list_size, value_fmt


cdef str value_format(str fmt):
    if fmt not in DTYPE_NAMES:
        raise TypeError(f"Arrow type {type_name(fmt)} has no quill dtype; Tensor.from_arrow expects "
                        + ", ".join(type_name(f) for f in DTYPE_NAMES) + " values")
    return fmt


cdef tuple tensor_values(_Array array, bint in_struct, int64_t list_size, str value_fmt):
    """(rows, buffer) of one chunk: an ArrowBuffer over its values, or for bool a bytes copy."""
    cdef const ArrowArray *node = &array.c
    cdef const ArrowArray *values
    cdef int64_t rows = -1, parent_offset = 0, start, count, i
    cdef ArrowBuffer buffer
    cdef const uint8_t *bits
    cdef const void *data
    if in_struct:
        check_node(node, "the record batch", 1, 1)
        check_no_nulls(node, node.offset, node.length, "the record batch", "a tensor has no nulls")
        rows = node.length
        parent_offset = node.offset
        node = node.children[0]
    check_node(node, "the tensor array", 1 if list_size >= 0 else 2, 1 if list_size >= 0 else 0)
    if rows < 0:
        rows = node.length
    start = child_start(node, parent_offset, rows, "the tensor array")
    values = node
    count = rows
    if list_size >= 0:
        check_no_nulls(node, start, rows, "the tensor array", "a tensor has no nulls")
        values = node.children[0]
        check_node(values, "the tensor values", 2, 0)
        if <object>(start + rows) * list_size > values.length:
            raise DecodeError(f"the tensor values hold {values.length} values; {start + rows} rows of "
                              f"{list_size} need {(start + rows) * list_size}")
        start = values.offset + start * list_size
        count = rows * list_size
    check_no_nulls(values, start, count, "the tensor values", "a tensor has no nulls")
    data = data_buffer(values, 1, count, "the tensor values")
    if value_fmt == "b":
        bits = <const uint8_t *>data
        out = bytearray(count)
        for i in range(count):
            out[i] = quill_bit(bits, start + i)
        return rows, out
    cdef int64_t width = ELEMENT_SIZES[value_fmt]
    buffer = ArrowBuffer.__new__(ArrowBuffer)
    buffer._owner = array
    buffer._size = count * width
    buffer._data = <void *>(<const char *>data + start * width) if count else <void *>&EMPTY_BYTE
    return rows, buffer
