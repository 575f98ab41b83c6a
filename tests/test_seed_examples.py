"""The examples of the seed README (the API first promised to users), run as written.

Each example is copied verbatim; the assertions check that it prints what the seed's
comments say. The RPC example runs against the reference demo server on loopback, with
only the URL changed from the seed's ``http://localhost:8080``.
"""

import contextlib
import io
import textwrap

import pytest

TENSOR_EXAMPLE = '''
import quill
import numpy as np

# Create a tensor from NumPy array
arr = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
tensor = quill.Tensor.from_numpy(arr, name="input")

# Access tensor properties
print(f"Shape: {tensor.shape}")      # [2, 2]
print(f"DType: {tensor.dtype}")      # float32
print(f"Elements: {tensor.num_elements}")  # 4
print(f"Bytes: {tensor.size_bytes}")  # 16

# Convert back to NumPy
result = tensor.to_numpy()

# Create zero tensor
zeros = quill.Tensor.zeros([3, 4], quill.DType.float32(), name="zeros")

# Create from raw bytes
data = bytes(16)  # 4 float32 zeros
tensor = quill.Tensor.from_bytes(data, [2, 2], quill.DType.float32())
'''

DTYPE_EXAMPLE = '''
import quill

# Available data types
dtypes = [
    quill.DType.float32(),   # 32-bit float
    quill.DType.float64(),   # 64-bit float
    quill.DType.float16(),   # 16-bit IEEE float
    quill.DType.bfloat16(),  # Brain floating point
    quill.DType.int8(),      # 8-bit signed integer
    quill.DType.int32(),     # 32-bit signed integer
    quill.DType.int64(),     # 64-bit signed integer
    quill.DType.uint8(),     # 8-bit unsigned integer
    quill.DType.bool_(),     # Boolean
]

# Check properties
dtype = quill.DType.float32()
print(f"Element size: {dtype.element_size} bytes")  # 4
print(f"Is float: {dtype.is_float()}")  # True
print(f"Is integer: {dtype.is_integer()}")  # False
'''

TOKEN_EXAMPLE = '''
import quill

# Create individual tokens
token = quill.Token(id=42, position=0, text="hello", logprob=-0.5)
print(f"Token: {token}")  # Token(id=42, text='hello', pos=0)
print(f"Probability: {token.prob()}")  # ~0.607

# Create token batches for streaming
batch = quill.TokenBatch(sequence_id=1)
batch.add(quill.Token.with_text(1, "Hello", 0))
batch.add(quill.Token.with_text(2, " ", 1))
batch.add(quill.Token.with_text(3, "World", 2))

# Get concatenated text
print(batch.text())  # "Hello World"

# Get token IDs
print(batch.token_ids())  # [1, 2, 3]

# Mark final batch
batch.is_final = True

# Add metadata
batch.set_metadata("model", "llama-7b")
batch.set_metadata("temperature", "0.7")

# Iterate over tokens
for token in batch:
    print(f"  {token.id}: {token.text}")
'''

CLIENT_EXAMPLE = '''
import quill

# Create client
client = quill.QuillClient(
    "http://localhost:8080",
    timeout_ms=30000,
    enable_compression=True
)

# Set authentication
client.set_bearer_token("my-auth-token")
# or
client.set_api_key("api-key-123")

# Make RPC call with bytes
request = b'{"prompt": "Hello"}'
response = client.call(
    "inference.v1.LLMService",
    "Generate",
    request
)

# Make RPC call with JSON (automatic serialization)
response = client.call_json(
    "inference.v1.LLMService",
    "Generate",
    {"prompt": "Hello", "max_tokens": 100}
)
'''


def run(source: str) -> tuple[list[str], dict]:
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(textwrap.dedent(source), "<seed example>", "exec"), namespace)
    return out.getvalue().splitlines(), namespace


def test_tensor_example():
    lines, ns = run(TENSOR_EXAMPLE)
    assert lines == ["Shape: [2, 2]", "DType: float32", "Elements: 4", "Bytes: 16"]
    assert ns["result"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert ns["zeros"].shape == [3, 4] and ns["zeros"].name == "zeros"
    assert ns["tensor"].to_numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_dtype_example():
    lines, ns = run(DTYPE_EXAMPLE)
    assert lines == ["Element size: 4 bytes", "Is float: True", "Is integer: False"]
    assert len(set(ns["dtypes"])) == 9


def test_token_example():
    lines, ns = run(TOKEN_EXAMPLE)
    assert lines[0] == "Token: Token(id=42, text='hello', pos=0)"
    assert lines[1].startswith("Probability: 0.60653")
    assert lines[2:] == ["Hello World", "[1, 2, 3]", "  1: Hello", "  2:  ", "  3: World"]
    batch = ns["batch"]
    assert batch.is_final and batch.get_metadata("model") == "llama-7b"


def test_client_example(demo_server_url):
    """The seed calls Generate, a token stream, with ``call()`` first. That call got the stream's
    raw frames as bytes until quill 0.2, which refuses a call of the wrong kind with an error naming
    the right one (the call_json() of Generate that follows is right, and answers JSON)."""
    from quill.errors import WrongKindError

    source = CLIENT_EXAMPLE.replace("http://localhost:8080", demo_server_url)
    wrong, rest = source.split("# Make RPC call with JSON (automatic serialization)")
    with pytest.raises(WrongKindError, match=r"Generate is a token stream: use stream_tokens\(\)"):
        run(wrong)
    _, ns = run(wrong.split("# Make RPC call with bytes")[0] + rest)
    assert ns["response"]["text"] and len(ns["response"]["tokens"]) == 100
