"""The daemon these tests call: started by tests/tests/python_client.rs (run by `cargo xtask
test`) for a tracker instance of its own, with `watch_buffer_events = 64`."""

import os

import pytest

import tracker_client as tc


@pytest.fixture(scope="session")
def socket():
    path = os.environ.get("TRACKER_TEST_SOCKET")
    if not path:
        pytest.fail(
            "TRACKER_TEST_SOCKET is not set: these tests need a running daemon; "
            "`cargo xtask test python_client` starts one (tests/tests/python_client.rs)"
        )
    return path


@pytest.fixture
def client(socket):
    with tc.Client(socket, timeout=30) as c:
        yield c


@pytest.fixture
def slot(request, client):
    """A slot name of this test's own; whatever is left of it is killed and released after."""
    prefix = os.environ.get("TRACKER_TEST_SLOT_PREFIX", f"py{os.getpid()}")
    name = f"{prefix}-{request.node.name.removeprefix('test_')}"[:64].replace("_", "-")
    yield name
    try:
        client.kill(name, timeout=30)
        client.release(name)
    except tc.NotFound:
        pass
