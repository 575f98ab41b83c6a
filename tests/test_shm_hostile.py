"""A hostile peer on the shared-memory descriptor channel and in the region headers: each attempt
is refused with a message naming what was wrong, no descriptor it sent stays open, and the
server keeps serving an honest client throughout."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pwd
import shutil
import socket
import sys
import tempfile
from urllib.parse import unquote

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from serve_process import open_fds  # noqa: E402
from shm_servers import SVC, shm_server  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.frames import END_STREAM_FRAME, TensorFrameType, encode_tensor_frame  # noqa: E402
from quill.server.shm_channel import MAX_ARENAS, ShmChannel  # noqa: E402
from quill.tensor import Tensor, TensorMeta  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="shared memory is Linux only")
MIB = 1 << 20


@pytest.fixture(scope="module")
def url():
    with shm_server() as base_url:
        yield base_url


def channel_path(url: str) -> str:
    return unquote(url[len("http+unix://"):]) + ".shm"


class Peer:
    """A raw descriptor-channel connection."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.hello = json.loads(self.sock.recv(4096))

    def ask(self, message, fds=()) -> dict:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
        return json.loads(self.sock.recv(4096))

    def register(self, fd: int, size: int) -> dict:
        return self.ask({"op": "register", "size": size}, [fd])

    def close(self):
        self.sock.close()


def memfd(size: int, seals: int = fcntl.F_SEAL_SHRINK) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def still_serving(url: str) -> None:
    a = np.arange(MIB // 4, dtype=np.float32)
    with QuillClient(url, shared_memory=True) as client:
        assert np.array_equal(client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy(), a * 2)


def test_descriptors_that_are_not_sealed_memfds_are_refused(url, tmp_path):
    peer = Peer(channel_path(url))
    assert peer.hello["op"] == "hello"
    baseline = open_fds()
    unsealed = memfd(MIB, seals=0)
    assert "F_SEAL_SHRINK" in peer.register(unsealed, MIB)["error"]
    read_end, write_end = os.pipe()
    assert "a pipe, not a memfd" in peer.register(read_end, MIB)["error"]
    regular = tmp_path / "file"
    regular.write_bytes(bytes(MIB))
    file_fd = os.open(regular, os.O_RDWR)
    assert "not a memfd" in peer.register(file_fd, MIB)["error"]
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    assert "a directory, not a memfd" in peer.register(dir_fd, MIB)["error"]
    shm_path = f"/dev/shm/quill-hostile-{os.getpid()}"
    shm_fd = os.open(shm_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.unlink(shm_path)
    os.ftruncate(shm_fd, MIB)
    assert "not a memfd" in peer.register(shm_fd, MIB)["error"]
    write_sealed = memfd(MIB, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    assert "sealed against writing" in peer.register(write_sealed, MIB)["error"]
    sealed = memfd(MIB)
    assert "the message says 4096" in peer.register(sealed, 4096)["error"]
    assert "holds 0 bytes" in peer.register(memfd(0), 0)["error"]
    for fd in (unsealed, read_end, write_end, file_fd, dir_fd, shm_fd, write_sealed, sealed):
        os.close(fd)
    # everything the server received was closed again (this process is the server too)
    assert wait_until(lambda: open_fds() <= baseline + 1, 5), (open_fds(), baseline)
    still_serving(url)
    peer.close()


def test_a_sealed_memfd_cannot_shrink_after_it_was_offered(url):
    peer = Peer(channel_path(url))
    fd = memfd(MIB)
    assert peer.register(fd, MIB)["op"] == "registered"
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 4096)  # what would SIGBUS the server, had the seal not been required
    os.close(fd)
    peer.close()
    still_serving(url)


def test_malformed_messages_are_refused(url):
    peer = Peer(channel_path(url))
    assert "not JSON" in peer.ask(b"\xff garbage")["error"]
    assert "'op'" in peer.ask(b"[1, 2]")["error"]
    assert "unknown op" in peer.ask({"op": "explode"})["error"]
    assert "exactly one descriptor, this one 0" in peer.ask({"op": "register", "size": MIB})["error"]
    a, b = memfd(MIB), memfd(MIB)
    assert "exactly one descriptor, this one 2" in peer.ask({"op": "register", "size": MIB}, [a, b])["error"]
    assert "carries no descriptors" in peer.ask({"op": "drop", "arena": 1}, [a])["error"]
    assert "non-negative integer" in peer.ask({"op": "register", "size": -1}, [a])["error"]
    assert "not registered" in peer.ask({"op": "drop", "arena": 12345})["error"]
    assert "longer than" in peer.ask(b'{"op":"drop","pad":"' + b"x" * 5000 + b'"}')["error"]
    os.close(a)
    os.close(b)
    peer.close()
    still_serving(url)


def raw_call(url: str, headers: dict, body: bytes) -> tuple[int, str]:
    """POST a tensor call with hand-made shared-memory headers; (status, body)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(unquote(url[len("http+unix://"):]))
    lines = [f"POST /{SVC}/Echo HTTP/1.1", "Host: localhost", "Content-Type: application/proto; frames=tensor",
             f"Content-Length: {len(body)}", "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    head, _, text = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), text.decode()


def meta_only(size: int) -> bytes:
    meta = TensorMeta((size,), "uint8")
    return encode_tensor_frame(TensorFrameType.TENSOR_META, meta.encode()) + END_STREAM_FRAME


@pytest.mark.parametrize("region, size, message", [
    ("{arena} 0 2097152", 2097152, "past the end of arena"),
    ("{arena} 1048576 1", 1, "past the end of arena"),
    ("{arena} 18446744073709551615 1", 1, "past the end of arena"),
    ("{arena} 1 18446744073709551615", 18446744073709551615, "past the end of arena"),
    ("{arena} 0 99999999999999999999999", 1, "three decimal numbers"),
    ("{arena} -1 4", 4, "three decimal numbers"),
    ("{arena} 0", 4, "three decimal numbers"),
    ("999 0 4", 4, "arena 999 is not registered"),
    ("{arena} 0 4096", 8, "needs 8 bytes, its region holds 4096"),
])
def test_regions_outside_their_arena_are_refused(url, region, size, message):
    peer = Peer(channel_path(url))
    fd = memfd(MIB)
    arena = peer.register(fd, MIB)["arena"]
    os.close(fd)
    headers = {"Quill-Shm-Session": peer.hello["session"], "Quill-Shm-Data": region.format(arena=arena)}
    status, text = raw_call(url, headers, meta_only(size))
    assert status in (400, 413) and message in text, text
    peer.close()
    still_serving(url)


def test_unknown_sessions_and_bodies_beyond_the_meta_are_refused(url):
    status, text = raw_call(url, {"Quill-Shm-Session": "0" * 32, "Quill-Shm-Data": "1 0 4"}, meta_only(4))
    assert status == 400 and "unknown shared-memory session" in text
    peer = Peer(channel_path(url))
    fd = memfd(MIB)
    arena = peer.register(fd, MIB)["arena"]
    headers = {"Quill-Shm-Session": peer.hello["session"], "Quill-Shm-Data": f"{arena} 0 4"}
    status, text = raw_call(url, headers, meta_only(4)[:-9] + b"\x11\0\0\0\0\0\0\0\4abcd" + END_STREAM_FRAME)
    assert status == 400 and "TENSOR_META then END_STREAM" in text
    status, text = raw_call(url, {"Quill-Shm-Session": peer.hello["session"]}, meta_only(4))
    assert status == 400 and "Quill-Shm-Data" in text
    os.close(fd)
    peer.close()


def test_ten_thousand_arenas_are_bounded_and_freed_with_the_connection(url):
    baseline = open_fds()
    peer = Peer(channel_path(url))
    outcomes = {}
    for _ in range(10_000):
        fd = memfd(4096)
        reply = peer.register(fd, 4096)
        os.close(fd)
        outcomes[reply["op"]] = outcomes.get(reply["op"], 0) + 1
        if reply["op"] == "error":
            assert "arenas already (the limit)" in reply["error"]
    assert outcomes == {"registered": MAX_ARENAS, "error": 10_000 - MAX_ARENAS}
    assert open_fds() <= baseline + MAX_ARENAS + 2  # one descriptor per mapping, no more
    still_serving(url)  # its own connection gets arenas: the bound is per connection
    peer.close()
    assert wait_until(lambda: open_fds() <= baseline, 5), (open_fds(), baseline)


def test_bytes_and_connections_are_bounded(tmp_path):
    channel = ShmChannel(str(tmp_path / "c.shm"), max_bytes=2 * MIB, max_peers=2)
    channel.start()
    try:
        peer, other = Peer(channel.path), Peer(channel.path)
        fd = memfd(2 * MIB)
        assert peer.register(fd, 2 * MIB)["op"] == "registered"
        small = memfd(4096)
        assert "would exceed 2097152 bytes" in peer.register(small, 4096)["error"]
        assert peer.ask({"op": "drop", "arena": 1})["op"] == "dropped"
        assert peer.register(small, 4096)["op"] == "registered"
        third = Peer(channel.path)
        assert third.hello["op"] == "refused" and "2 connections already" in third.hello["error"]
        for s in (peer, other, third):
            s.close()
        os.close(fd)
        os.close(small)
        assert wait_until(lambda: channel.peers == 0, 5)
    finally:
        channel.close()
    assert not os.path.exists(channel.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_a_client_of_another_uid_is_refused_unless_allowed(url):
    nobody = pwd.getpwnam("nobody").pw_uid
    tmp_path = pathlib.Path(tempfile.mkdtemp())  # pytest's tmp_path lies in a folder only root may enter
    open_channel = ShmChannel(str(tmp_path / "open.shm"), mode=0o666)  # anyone may connect: SO_PEERCRED decides
    open_channel.start()
    allowing = ShmChannel(str(tmp_path / "allow.shm"), mode=0o666, allow_uids=[os.getuid(), nobody])
    allowing.start()
    os.chmod(tmp_path, 0o755)
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setuid(nobody)
                answers = []
                try:
                    Peer(channel_path(url))
                    answers.append("connected")
                except PermissionError:
                    answers.append("no access")  # the server's 0600 socket
                answers.append(Peer(open_channel.path).hello.get("error", ""))
                answers.append(Peer(allowing.path).hello["op"])
                os.write(write_end, json.dumps(answers).encode())
                code = 0
            except BaseException as exc:  # told to the parent through the assertion below
                os.write(write_end, json.dumps([repr(exc)]).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        answers = json.loads(os.read(read_end, 4096))
        os.close(read_end)
    finally:
        open_channel.close()
        allowing.close()
        shutil.rmtree(tmp_path)
    assert os.waitstatus_to_exitcode(status) == 0, answers
    assert answers[0] == "no access"
    assert f"uid {nobody} may not use this server's shared memory" in answers[1]
    assert answers[2] == "hello"  # on the allow list
    still_serving(url)
