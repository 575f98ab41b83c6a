"""The HTTP/2 engines alone, no sockets: quill's libnghttp2 binding against jh2 (a compiled,
h2-compatible state machine), each fed the same pre-recorded server bytes.

The server side is recorded once with the ``h2`` library: its preface and SETTINGS, then

* **bulk**: one response of 64 MiB in DATA frames of 1 MiB (the largest frame the clients allow);
* **small**: 10,000 responses (HEADERS with three fields, DATA of 100 bytes, END_STREAM).

Each engine opens the same streams (the requests are setup, not timed), then is fed the bytes in
pieces of 256 KiB (a socket read) and does what a transport does with every event: it hands
DATA back to the flow-control windows and collects what it has to send. Windows are at their
largest (2**31 - 1) on both, so the replay never depends on when a window update goes out.
Figures are medians of ``--rounds`` rounds.

    python benchmarks/bench_h2_engines.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import h2.config
import h2.connection
import h2.settings
import jh2.config
import jh2.connection
import jh2.events
import jh2.settings

from quill._core import h2engine

MIB = 1 << 20
WINDOW = (1 << 31) - 1
FRAME = 1 << 20
READ = 256 * 1024
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"bench"), (b":path", b"/b.v1.S/M")]


def record(responses: int, body: bytes) -> tuple[bytes, bytes]:
    """The server's bytes: (preface and SETTINGS, then every response), from the h2 library."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: WINDOW})
    server.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, h2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME})
    client.initiate_connection()
    client.increment_flow_control_window(WINDOW - 65535)
    server.receive_data(client.data_to_send())
    preface = server.data_to_send()
    client.receive_data(preface)
    for stream in range(responses):
        client.send_headers(1 + 2 * stream, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    for stream in range(responses):
        sid = 1 + 2 * stream
        server.send_headers(sid, [(":status", "200"), ("content-type", "application/proto"),
                                  ("content-length", str(len(body)))])
        for start in range(0, len(body), FRAME):
            server.send_data(sid, body[start:start + FRAME], end_stream=start + FRAME >= len(body))
    return preface, server.data_to_send()


def quill_engine(preface: bytes, answers: bytes, streams: int) -> tuple[int, float]:
    engine = h2engine.H2Engine(stream_window=WINDOW, connection_window=WINDOW, max_frame_size=FRAME)
    engine.data_to_send()
    engine.receive(preface)
    for _ in range(streams):
        engine.submit(REQUEST)
    engine.data_to_send()
    started = time.perf_counter()
    received = 0
    view = memoryview(answers)
    for start in range(0, len(view), READ):
        for event in engine.receive(view[start:start + READ]):
            if event[0] == h2engine.DATA:
                received += len(event[2])
                engine.consume(event[1], len(event[2]))
            elif event[0] == h2engine.CLOSED:
                engine.forget(event[1])
        engine.data_to_send()
    return received, time.perf_counter() - started


def jh2_engine(preface: bytes, answers: bytes, streams: int) -> tuple[int, float]:
    conn = jh2.connection.H2Connection(jh2.config.H2Configuration(client_side=True))
    conn.local_settings = jh2.settings.Settings(client=True, initial_values={
        jh2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, jh2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME})
    conn.max_inbound_frame_size = FRAME
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW - 65535)
    conn.data_to_send()
    conn.receive_data(preface)
    for stream in range(streams):
        conn.send_headers(1 + 2 * stream, REQUEST, end_stream=True)
    conn.data_to_send()
    started = time.perf_counter()
    received = 0
    view = memoryview(answers)
    for start in range(0, len(view), READ):
        for event in conn.receive_data(bytes(view[start:start + READ])):
            if isinstance(event, jh2.events.DataReceived):
                received += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        conn.data_to_send()
    return received, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    workloads = {"bulk: 1 x 64 MiB": (1, bytes(64 * MIB)), "small: 10,000 x 100 B": (10_000, b"x" * 100)}
    print(f"libnghttp2 {h2engine.NGHTTP2_VERSION_TEXT}, jh2 {jh2.__version__}; medians of {args.rounds} rounds")
    print(f"{'workload':<24}{'quill (nghttp2)':>18}{'jh2':>14}{'quill / jh2':>14}")
    for name, (streams, body) in workloads.items():
        preface, answers = record(streams, body)
        times: dict[str, list[float]] = {"quill": [], "jh2": []}
        for _ in range(args.rounds):
            for label, run in (("quill", quill_engine), ("jh2", jh2_engine)):
                received, seconds = run(preface, answers, streams)
                assert received == streams * len(body), (label, received)
                times[label].append(seconds)
        quill, other = statistics.median(times["quill"]), statistics.median(times["jh2"])
        if streams == 1:
            cells = f"{len(body) / quill / 1e6:>12,.0f} MB/s{len(body) / other / 1e6:>9,.0f} MB/s"
        else:
            cells = f"{streams / quill:>13,.0f} /s {streams / other:>10,.0f} /s"
        print(f"{name:<24}{cells}{other / quill:>13.1f}x")


if __name__ == "__main__":
    main()
