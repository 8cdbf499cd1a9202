"""Drive the tracker daemon's gRPC API with clients this project did not write: grpcio stubs
generated from proto/tracker/v1/tracker.proto by grpcio-tools, grpcio-health-checking,
grpcio-reflection, and prometheus-client's OpenMetrics parser.

Run by tests/tests/daemon.rs against a daemon it started:

    client_test.py --socket PATH --proto DIR --metrics URL --slot NAME [--group GID]

URL is http://HOST:PORT/metrics, or unix:PATH for the daemon's metrics socket.

As root it runs the whole slot lifecycle, then itself again as other users:
  - uid 65534 without the daemon's group: cannot even connect (the socket is 0660);
  - uid 65534 in the daemon's group (supplementary): may call, owns what it creates;
  - euid 65534 whose file-system uid is still 0 (so the socket's mode lets it connect):
    the daemon's own peer-credential check refuses every call, health and reflection too.
Exits non-zero, with the failed assertion, on any failure.
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

NOBODY = 65534
# Under software emulation everything is slower: every wait stretches by this factor.
SCALE = max(1, int(os.environ.get("TRACKER_TEST_TIME_SCALE", "1")))


def scaled(seconds):
    return seconds * SCALE


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--proto", required=True, help="the proto/ directory")
    p.add_argument("--metrics", required=True, help="http://HOST:PORT/metrics or unix:PATH")
    p.add_argument("--slot", required=True, help="a slot name this run may use")
    p.add_argument("--group", type=int, required=True, help="the daemon's group")
    p.add_argument("--stubs", help="where generated stubs are (made when absent)")
    p.add_argument(
        "--mode",
        default="root",
        choices=["root", "stranger", "member", "peer-denied"],
    )
    return p.parse_args()


def become_peer_denied():
    """euid/egid nobody, no groups, but fsuid 0: connect() passes the socket's mode, so only
    the daemon's SO_PEERCRED check stands in the way. Done before grpc is imported, so that
    its threads, which make the connection, inherit these credentials."""
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, 0)
    os.setresuid(0, NOBODY, 0)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.setfsuid(0)
    assert libc.setfsuid(0xFFFFFFFF) == 0, "fsuid is not 0"
    assert os.geteuid() == NOBODY and os.getegid() == NOBODY


def generate_stubs(proto_dir, out):
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "tracker/v1/tracker.proto"),
        ]
    )
    assert rc == 0, f"protoc failed: {rc}"


def channel(grpc, socket):
    # gRPC C-core sends the socket's path as :authority, which the daemon's HTTP/2 layer (h2)
    # rejects as malformed (PROTOCOL_ERROR): send "localhost", as grpc-go does on sockets.
    return grpc.insecure_channel(f"unix:{socket}", options=[("grpc.default_authority", "localhost")])


class Client:
    def __init__(self, args):
        import grpc

        sys.path.insert(0, args.stubs)
        from tracker.v1 import tracker_pb2, tracker_pb2_grpc

        self.grpc = grpc
        self.pb = tracker_pb2
        self.channel = channel(grpc, args.socket)
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)

    def code_of(self, fn, *a, **kw):
        """The status code a call fails with (None if it succeeds)."""
        try:
            fn(*a, timeout=scaled(30), **kw)
        except self.grpc.RpcError as e:
            return e.code(), e.details()
        return None, None


def metrics_of(url):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    if url.startswith("unix:"):
        text = get_over_unix(url.removeprefix("unix:"), "/metrics")
    else:
        text = urllib.request.urlopen(url, timeout=scaled(10)).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def get_over_unix(path, target):
    """GET target over the HTTP server on the Unix socket at path (as curl --unix-socket)."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(path)

    conn = UnixConnection("localhost")
    conn.request("GET", target)
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 200, f"GET {target} on {path}: {r.status} {body}"
    return body


def sample(samples, name, **labels):
    for have, value in samples.get(name, []):
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    raise AssertionError(f"no sample {name}{labels}; have {sorted(samples)}")


def health_and_reflection(args):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    ch = channel(grpc, args.socket)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ["", "tracker.v1.Tracker"]:
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=scaled(10))
        assert r.status == health_pb2.HealthCheckResponse.SERVING, (service, r)

    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    replies = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=scaled(10)
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    for want in ["tracker.v1.Tracker", "grpc.health.v1.Health"]:
        assert want in names, (want, names)
    # The descriptors themselves, as a client without the .proto would get them.
    db = ProtoReflectionDescriptorDatabase(ch)
    svc = db.FindFileContainingSymbol("tracker.v1.Tracker")
    methods = {m.name for s in svc.service for m in s.method}
    for want in ["CreateSlot", "AdoptProcess", "GetUsage", "KillSlot", "Watch"]:
        assert want in methods, (want, methods)
    print(f"health: SERVING; reflection lists {sorted(names)}")


class Watcher(threading.Thread):
    """Collect the slot's events from a Watch stream, from the moment the daemon sent the
    response headers (the subscription is in place then)."""

    def __init__(self, client, slot):
        super().__init__(daemon=True)
        self.events = []
        self.error = None
        self.call = client.stub.Watch(client.pb.WatchRequest(slot=slot))
        self.call.initial_metadata()

    def run(self):
        try:
            for r in self.call:
                self.events.append(r.event)
        except Exception as e:  # the cancel at the end, or a real failure
            self.error = e

    def wait_for(self, pred, what, timeout=scaled(30)):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(pred(e) for e in list(self.events)):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {what} event; got {self.events} ({self.error})")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def lifecycle(args, c):
    pb, stub, grpc = c.pb, c.stub, c.grpc
    slot = args.slot
    health_and_reflection(args)
    before = {s.slot.name for s in stub.ListSlots(pb.ListSlotsRequest(), timeout=scaled(10)).slots}
    assert slot not in before, before

    watcher = Watcher(c, slot)
    watcher.start()

    created = stub.CreateSlot(
        pb.CreateSlotRequest(name=slot, limits=pb.Limits(tasks_max=100)), timeout=scaled(30)
    )
    assert created.slot.name == slot and created.slot.owner_uid == 0, created
    assert created.slot.limits.tasks_max == 100, created

    # A job that, once adopted, double-forks a daemon into a new session and carries on.
    job = subprocess.Popen(
        [
            "sh",
            "-c",
            "read go; (setsid sh -c 'exec sleep 3001' </dev/null >/dev/null 2>&1 &); "
            "exec sleep 3002",
        ],
        stdin=subprocess.PIPE,
        # Not this script's output: a job left behind by a failure would hold it open, and the
        # test reading it would wait for the job instead of reporting the failure.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    adopted = stub.AdoptProcess(pb.AdoptProcessRequest(slot=slot, pid=job.pid), timeout=scaled(30))
    assert adopted.processes == 1, adopted
    job.stdin.write(b"go\n")
    job.stdin.close()

    def sleeps():
        procs = stub.ListProcesses(pb.ListProcessesRequest(slot=slot), timeout=scaled(10)).processes
        return {p.cmdline[-1]: p for p in procs if p.comm == "sleep"}

    deadline = time.time() + scaled(30)
    while set(sleeps()) != {"3001", "3002"} and time.time() < deadline:
        time.sleep(0.05)
    procs = sleeps()
    assert set(procs) == {"3001", "3002"}, procs
    daemon = procs["3001"]
    assert daemon.pid != job.pid and daemon.ppid != job.pid, daemon
    assert os.getsid(daemon.pid) == daemon.pid, "the daemon is not in a session of its own"
    assert daemon.start_time_ns > 0
    print(f"adopted pid {job.pid}; its double-forked daemon {daemon.pid} (ppid {daemon.ppid}) is in the slot")

    usage = stub.GetUsage(pb.GetUsageRequest(slot=slot), timeout=scaled(10)).usage
    assert usage.tasks_live == 2, usage
    assert usage.tasks_started >= 3 and usage.execs >= 2, usage
    assert usage.memory_current_bytes > 0, usage

    m = metrics_of(args.metrics)
    assert sample(m, "tracker_slot_tasks", slot=slot, owner_uid="0") == 2
    sample(m, "tracker_slot_cpu_seconds_total", slot=slot, mode="user")
    assert sample(m, "tracker_programs_attached") > 0
    assert sample(m, "tracker_slot_memory_bytes", slot=slot) > 0

    listed = {s.slot.name: s for s in stub.ListSlots(pb.ListSlotsRequest(), timeout=scaled(10)).slots}
    assert listed[slot].tasks_live == 2, listed[slot]

    # Suspend and resume.
    r = stub.SuspendSlot(pb.SuspendSlotRequest(slot=slot), timeout=scaled(30))
    assert r.cgroup_frozen or r.processes_stopped == 2, r
    listed = {s.slot.name: s for s in stub.ListSlots(pb.ListSlotsRequest(), timeout=scaled(10)).slots}
    assert listed[slot].suspended, listed[slot]
    stub.ResumeSlot(pb.ResumeSlotRequest(slot=slot), timeout=scaled(30))
    listed = {s.slot.name: s for s in stub.ListSlots(pb.ListSlotsRequest(), timeout=scaled(10)).slots}
    assert not listed[slot].suspended, listed[slot]

    # Bad requests: the right code, and nothing changes.
    expect = [
        (stub.GetUsage, pb.GetUsageRequest(slot="no-such-slot"), grpc.StatusCode.NOT_FOUND),
        (stub.CreateSlot, pb.CreateSlotRequest(name="bad/name"), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.CreateSlot, pb.CreateSlotRequest(name=slot), grpc.StatusCode.ALREADY_EXISTS),
        (
            stub.CreateSlot,
            pb.CreateSlotRequest(name=slot + "-x", limits=pb.Limits(cpu_weight=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.CreateSlot,
            pb.CreateSlotRequest(name=slot + "-x", limits=pb.Limits(allow_connect=["10.0.0.0/33"])),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (stub.AdoptProcess, pb.AdoptProcessRequest(slot=slot, pid=4194304), grpc.StatusCode.NOT_FOUND),
        (stub.AdoptProcess, pb.AdoptProcessRequest(slot=slot, pid=1), grpc.StatusCode.FAILED_PRECONDITION),
        (stub.SignalSlot, pb.SignalSlotRequest(slot=slot, signal=0), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.ReleaseSlot, pb.ReleaseSlotRequest(slot=slot), grpc.StatusCode.FAILED_PRECONDITION),
        (
            stub.KillSlot,
            pb.KillSlotRequest(slot=slot, timeout_seconds=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (stub.CreateSlot, pb.CreateSlotRequest(name="x" * 200_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (stub.Watch, pb.WatchRequest(slot="bad/name"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for method, req, want in expect:
        if method is stub.Watch:
            got = c.code_of(lambda r, timeout: next(method(r, timeout=timeout)), req)
        else:
            got = c.code_of(method, req)
        assert got[0] == want, (method._method, req, got)
        assert got[1] and "\n" not in got[1], ("not one clear line", got)
    after = stub.ListSlots(pb.ListSlotsRequest(), timeout=scaled(10)).slots
    assert {s.slot.name for s in after} == before | {slot}, after
    assert {s.slot.name: s for s in after}[slot].tasks_live == 2
    print(f"{len(expect)} bad requests: each refused with its code, nothing changed")

    # SIGCONT reaches both, harmlessly: a signal to the whole slot.
    sent = stub.SignalSlot(pb.SignalSlotRequest(slot=slot, signal=signal.SIGCONT), timeout=scaled(10))
    assert sent.processes == 2, sent

    report = stub.KillSlot(pb.KillSlotRequest(slot=slot), timeout=scaled(60)).report
    assert report.complete and not report.survivors, report
    assert report.killed == 2, report
    job.wait(timeout=scaled(10))
    for p in procs.values():
        assert not alive(p.pid), f"{p.pid} survived the kill"
    print(f"killed {report.killed} process(es) in {report.elapsed_ms:.1f} ms")

    watcher.wait_for(lambda e: e.kind == pb.EVENT_KIND_KILL_DONE, "KILL_DONE")
    events = list(watcher.events)
    kinds = [pb.EventKind.Name(e.kind) for e in events]
    for want in ["EVENT_KIND_FORK", "EVENT_KIND_EXEC", "EVENT_KIND_EXIT", "EVENT_KIND_SLOT_EMPTY"]:
        assert want in kinds, (want, kinds)
    assert "EVENT_KIND_LOST" not in kinds, kinds
    # Empty once, after its last exit; the kill's end after that.
    assert kinds.count("EVENT_KIND_SLOT_EMPTY") == 1, kinds
    assert kinds[-2:] == ["EVENT_KIND_SLOT_EMPTY", "EVENT_KIND_KILL_DONE"], kinds
    assert all(e.slot == slot for e in events), events
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    execs = {e.comm for e in events if e.kind == pb.EVENT_KIND_EXEC}
    assert "sleep" in execs, execs
    watcher.call.cancel()
    print(f"watch: {len(events)} events in order: {' '.join(k.removeprefix('EVENT_KIND_') for k in kinds)}")

    m = metrics_of(args.metrics)
    assert sample(m, "tracker_kills_total", result="complete") >= 1
    assert sample(m, "tracker_kill_duration_seconds_count") >= 1

    stub.ReleaseSlot(pb.ReleaseSlotRequest(slot=slot), timeout=scaled(30))
    assert c.code_of(stub.GetUsage, pb.GetUsageRequest(slot=slot))[0] == grpc.StatusCode.NOT_FOUND
    print(f"released {slot}")


def as_user(args, mode, **creds):
    cmd = [sys.executable, __file__, "--mode", mode]
    for k in ["socket", "proto", "metrics", "slot", "group", "stubs"]:
        cmd += [f"--{k}", str(getattr(args, k))]
    r = subprocess.run(cmd, timeout=scaled(120), **creds)
    assert r.returncode == 0, f"{mode} run failed ({r.returncode})"


def stranger(args, c):
    code, details = c.code_of(c.stub.ListSlots, c.pb.ListSlotsRequest())
    assert code == c.grpc.StatusCode.UNAVAILABLE, (code, details)
    assert "ermission denied" in details, details
    print(f"uid {os.getuid()} outside the group: cannot connect ({details})")


def member(args, c):
    pb = c.pb
    name = args.slot + "-member"
    created = c.stub.CreateSlot(pb.CreateSlotRequest(name=name), timeout=scaled(30))
    assert created.slot.owner_uid == os.getuid(), created
    c.stub.ReleaseSlot(pb.ReleaseSlotRequest(slot=name), timeout=scaled(30))
    print(f"uid {os.getuid()} in group {args.group}: may call; owns the slot it made")


def peer_denied(args, c):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    pb, grpc = c.pb, c.grpc
    calls = [
        (c.stub.ListSlots, pb.ListSlotsRequest()),
        (c.stub.CreateSlot, pb.CreateSlotRequest(name=args.slot + "-denied")),
        (c.stub.GetUsage, pb.GetUsageRequest(slot=args.slot)),
        (health_pb2_grpc.HealthStub(c.channel).Check, health_pb2.HealthCheckRequest()),
    ]
    for method, req in calls:
        code, details = c.code_of(method, req)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method._method, code, details)
    print(f"euid {os.geteuid()} with fsuid 0: connected, every call PERMISSION_DENIED ({details})")


def main():
    args = parse_args()
    if args.mode == "peer-denied":
        become_peer_denied()
    if args.stubs is None:
        args.stubs = tempfile.mkdtemp(prefix="tracker-stubs-")
        os.chmod(args.stubs, 0o755)
        generate_stubs(args.proto, args.stubs)
    c = Client(args)
    if args.mode == "root":
        try:
            lifecycle(args, c)
        except BaseException:
            # Leave no job behind the failure (it reports itself on the way out).
            for call, req in [(c.stub.KillSlot, c.pb.KillSlotRequest), (c.stub.ReleaseSlot, c.pb.ReleaseSlotRequest)]:
                c.code_of(call, req(slot=args.slot))
            raise
        nobody = dict(user=NOBODY, group=NOBODY, extra_groups=[])
        as_user(args, "stranger", **nobody)
        as_user(args, "member", **{**nobody, "extra_groups": [args.group]})
        as_user(args, "peer-denied")
        # Nothing the other users tried is left behind.
        names = {s.slot.name for s in c.stub.ListSlots(c.pb.ListSlotsRequest(), timeout=scaled(10)).slots}
        assert not any(n.startswith(args.slot) for n in names), names
        print("python client: all checks passed")
    else:
        {"stranger": stranger, "member": member, "peer-denied": peer_denied}[args.mode](args, c)


if __name__ == "__main__":
    main()
