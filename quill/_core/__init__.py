"""The compiled core: Cython modules built against the NumPy C API (nothing here is public).

=================  ==========================================================================
``tokens``         Token, TokenBatch, TokenBatchBuilder: the token codec and columnar batches
``frames``         tensor frames, message-stream frames, incremental parsers, payload windows
``tensor``         the TENSOR_META codec, byte equality, DLPack export
``casts``          float16/bfloat16 kernels with runtime CPU dispatch
``arrow``          Arrow C data / C stream export (PyCapsule interface)
``arrow_import``   checked import of Arrow C data from any producer
``h2engine``       a sans-IO HTTP/2 client engine on libnghttp2 (built only where it is found)
=================  ==========================================================================

Users import the public names from :mod:`quill`, :mod:`quill.frames` and :mod:`quill.tensor`;
those modules re-export what is defined here.
"""
