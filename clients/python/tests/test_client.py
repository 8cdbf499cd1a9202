"""tracker-client against a real daemon on the real kernel (see conftest.py): the channel
helper, every wrapped call, errors as exceptions with their gRPC code, Watch's loss
accounting, and `python -m tracker_client`."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

import tracker_client as tc
from tracker_client._gen import tracker_pb2 as pb
from tracker_client._gen import tracker_pb2_grpc

CLOCK_TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")


# Waits are stretched where the kernel is emulated in software (`cargo xtask test-vm` sets
# the variable; some 30 times slower): they wait for a condition, so a long one costs nothing.
SCALE = max(1, int(os.environ.get("TRACKER_TEST_TIME_SCALE", "1")))


def scaled(seconds):
    return seconds * SCALE


def wait_until(pred, what, timeout=30):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(p: tc.Process) -> bool:
    """Whether the process (pid and start time, so never a reused pid) still runs."""
    try:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    state, start_ticks = fields[0], int(fields[19])
    same = abs(start_ticks * CLOCK_TICK_NS - p.start_time_ns) < CLOCK_TICK_NS
    return same and state != "Z"


def adopted_job(client, slot, script):
    """`sh -c script` adopted into the slot before it runs anything: it waits for a line."""
    job = subprocess.Popen(["sh", "-c", "read go; " + script], stdin=subprocess.PIPE)
    adopted = client.adopt(slot, job.pid)
    assert adopted == tc.Adopted(processes=1, tasks=1), adopted
    job.stdin.write(b"go\n")
    job.stdin.flush()
    return job


def test_a_stock_channel_gets_internal_and_the_helper_works(socket):
    stock = grpc.insecure_channel(f"unix:{socket}")
    with pytest.raises(grpc.RpcError) as e:
        tracker_pb2_grpc.TrackerStub(stock).ListSlots(pb.ListSlotsRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL, e.value
    stock.close()
    with tc.channel(socket) as ch:
        tracker_pb2_grpc.TrackerStub(ch).ListSlots(pb.ListSlotsRequest(), timeout=10)


def test_a_batch_jobs_whole_life(client, slot):
    created = client.create(slot, limits=tc.Limits(tasks_max=100))
    assert created.slot.name == slot and created.slot.owner_uid == os.getuid(), created
    assert created.slot.limits == tc.Limits(tasks_max=100), created.slot.limits
    # Once adopted, the job double-forks a daemon into a session of its own and carries on.
    job = adopted_job(
        client,
        slot,
        "(setsid sh -c 'exec sleep 4001' </dev/null >/dev/null 2>&1 &); exec sleep 4002",
    )

    def sleeps():
        return {p.cmdline[-1]: p for p in client.processes(slot) if p.comm == "sleep"}

    wait_until(lambda: set(sleeps()) == {"4001", "4002"}, "both sleeps in the slot")
    procs = sleeps()
    daemon = procs["4001"]
    assert daemon.ppid != job.pid and os.getsid(daemon.pid) == daemon.pid, daemon
    assert all(alive(p) for p in procs.values()), procs

    usage = client.usage(slot)
    assert usage.slot == slot and usage.tasks_live == 2, usage
    assert usage.tasks_started >= 3 and usage.execs >= 2, usage
    assert usage.memory_current_bytes > 0 and usage.cpu_seconds >= 0, usage
    listed = {s.slot.name: s for s in client.slots()}
    assert listed[slot].tasks_live == 2, listed[slot]
    assert client.signal(slot, signal.SIGCONT) == 2

    report = client.kill(slot, timeout=30)
    assert report.complete and report.killed == 2 and report.survivors == [], report
    job.wait(timeout=scaled(10))
    assert not any(alive(p) for p in procs.values()), procs
    assert client.usage(slot).tasks_live == 0
    client.release(slot)
    with pytest.raises(tc.NotFound) as e:
        client.usage(slot)
    assert e.value.code == grpc.StatusCode.NOT_FOUND and slot in e.value.details


def test_refusals_are_exceptions_with_their_grpc_code(client, slot):
    client.create(slot)
    S = grpc.StatusCode
    refused = [
        (lambda: client.usage(slot + "-none"), tc.NotFound, S.NOT_FOUND),
        (lambda: client.processes(slot + "-none"), tc.NotFound, S.NOT_FOUND),
        (lambda: client.create(slot), tc.AlreadyExists, S.ALREADY_EXISTS),
        (lambda: client.create("bad/name"), tc.InvalidArgument, S.INVALID_ARGUMENT),
        (
            lambda: client.create(slot + "-x", limits=tc.Limits(cpu_weight=0)),
            tc.InvalidArgument,
            S.INVALID_ARGUMENT,
        ),
        (lambda: client.adopt(slot, 1), tc.FailedPrecondition, S.FAILED_PRECONDITION),
        (lambda: client.adopt(slot, 4194304), tc.NotFound, S.NOT_FOUND),
        (lambda: client.signal(slot, 0), tc.InvalidArgument, S.INVALID_ARGUMENT),
        (lambda: client.kill(slot, timeout=-1), tc.InvalidArgument, S.INVALID_ARGUMENT),
    ]
    before = {s.slot.name for s in client.slots()}
    for call, cls, code in refused:
        with pytest.raises(cls) as e:
            call()
        assert isinstance(e.value, tc.TrackerError) and e.value.code == code, e.value
        assert e.value.details and "\n" not in e.value.details, e.value.details
    assert {s.slot.name for s in client.slots()} == before
    client.release(slot)


def test_no_daemon_is_unavailable(tmp_path):
    with tc.Client(str(tmp_path / "absent.sock"), timeout=10) as c:
        with pytest.raises(tc.Unavailable) as e:
            c.slots()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_watch_sees_a_jobs_life_in_order(client, slot):
    client.create(slot)
    events = []
    with client.watch(slot, timeout=scaled(120)) as w:

        def collect():
            for e in w:
                events.append(e)

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        job = adopted_job(client, slot, "/bin/true; exit 0")
        job.wait(timeout=scaled(30))
        wait_until(lambda: any(e.kind == "SLOT_EMPTY" for e in events), "SLOT_EMPTY")
    reader.join(timeout=scaled(30))
    assert not reader.is_alive(), "closing the watch did not end the iteration"
    kinds = [e.kind for e in events]
    for want in ["FORK", "EXEC", "EXIT"]:
        assert want in kinds, kinds
    assert kinds.count("SLOT_EMPTY") == 1 and kinds[-1] == "SLOT_EMPTY", kinds
    assert all(e.slot == slot for e in events), events
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert "true" in {e.comm for e in events if e.kind == "EXEC"}, events
    assert w.received == len(events) and w.lost == {} and w.lost_total == 0
    client.release(slot)


FORKS = 5000
FORK_STORM = f"""
import os
for _ in range({FORKS}):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_watch_accounts_for_every_lost_event(socket, client, slot):
    """A client that reads nothing while 10,000 events come is told how many it lost, and
    that is exactly the gaps in the numbering it sees. Events wait in the daemon's queue for
    the client (64 here) and in HTTP/2's flow-control window (64 KiB with the window fixed:
    gRPC's C core otherwise grows it as data comes), ~800 KB is well beyond both."""
    client.create(slot)
    slow = tc.Client(grpc_channel=tc.channel(socket, [("grpc.http2.bdp_probe", 0)]), timeout=30)
    with slow, slow.watch("", timeout=scaled(300)) as w:
        storm = f"{sys.executable} -c '{FORK_STORM}'"
        job = adopted_job(client, slot, f"/bin/true; read go2; {storm}")
        events = iter(w)
        # Read up to the first /bin/true: every event after this one is accounted for.
        base = next(e for e in events if e.kind == "EXEC" and e.comm == "true").seq
        job.stdin.write(b"go2\n")
        job.stdin.close()
        job.wait(timeout=scaled(120))
        wait_until(lambda: client.usage(slot).tasks_live == 0, "the slot to empty")
        seen = []
        for e in events:
            seen.append(e)
            if e.kind == "SLOT_EMPTY" and e.slot == slot:
                break
    assert w.lost.get("CLIENT_TOO_SLOW", 0) > 0, f"nothing lost: {len(seen)} events, {w.lost}"
    numbered = [base] + [e.seq for e in seen if e.seq != 0]
    assert all(a < b for a, b in zip(numbered, numbered[1:])), numbered
    gaps = sum(b - a - 1 for a, b in zip(numbered, numbered[1:]))
    assert gaps == w.lost["CLIENT_TOO_SLOW"], (gaps, w.lost)
    assert w.received > len(seen), "the events before the base were counted too"
    assert client.usage(slot).processes_started >= FORKS
    client.release(slot)


def cli(socket, *args):
    return subprocess.run(
        [sys.executable, "-m", "tracker_client", "--socket", socket, *args],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


def test_python_m_tracker_client_for_scripts(socket, slot):
    r = cli(socket, "create", slot, "--tasks-max", "50")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["slot"]["limits"]["tasks_max"] == 50
    r = cli(socket, "create", slot)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "ALREADY_EXISTS" in r.stderr, r.stderr
    assert cli(socket, "create", slot, "--exist-ok").returncode == 0

    job = subprocess.Popen(["sh", "-c", "read go; exec sleep 4003"], stdin=subprocess.PIPE)
    r = cli(socket, "adopt", slot, str(job.pid))
    assert r.returncode == 0 and json.loads(r.stdout) == {"processes": 1, "tasks": 1}, r
    job.stdin.write(b"go\n")
    job.stdin.close()
    wait_until(
        lambda: [p["comm"] for p in json.loads(cli(socket, "ps", slot).stdout)] == ["sleep"],
        "sleep in the slot",
    )
    usage = json.loads(cli(socket, "usage", slot).stdout)
    assert usage["tasks_live"] == 1 and usage["execs"] >= 1, usage
    r = cli(socket, "kill", slot, "--timeout", "30")
    assert r.returncode == 0 and json.loads(r.stdout)["killed"] == 1, r
    assert job.wait(timeout=scaled(10)) == -signal.SIGKILL
    assert cli(socket, "release", slot).returncode == 0
    r = cli(socket, "usage", slot)
    assert r.returncode == 3 and "NOT_FOUND" in r.stderr, (r.returncode, r.stderr)
    r = cli(socket, "no-such-command")
    assert r.returncode == 2, r
