"""A live token stream read by pyarrow as an Arrow C stream, batch by batch as it arrives."""

from __future__ import annotations

import os
import sys

import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from test_client_streaming import SVC, build_app  # noqa: E402

from quill import QuillClient  # noqa: E402
from quill.server import serve_in_thread  # noqa: E402


def test_a_token_stream_is_an_arrow_record_batch_reader():
    with serve_in_thread(build_app()) as url:
        client = QuillClient(url, timeout_ms=10_000)
        expected = [batch for batch in client.stream_tokens(SVC, "Generate", b"hello big world")]
        reader = pa.RecordBatchReader.from_stream(client.stream_tokens(SVC, "Generate", b"hello big world"))
        batches = list(reader)
        assert [b.num_rows for b in batches] == [len(b) for b in expected]
        table = pa.Table.from_batches(batches)
        assert table.column("id").to_pylist() == [t.id for b in expected for t in b]
        assert table.column("text").to_pylist() == [t.text for b in expected for t in b]
        assert table.column("logprob").to_pylist() == [-0.5] * 3
        assert client.call(SVC, "Echo", b"after") == b"after"  # the stream ended cleanly: connection reused
