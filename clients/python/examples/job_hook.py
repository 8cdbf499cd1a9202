#!/usr/bin/env python3
"""A batch-system hook with tracker-client: run a job in a slot of its own, then kill
whatever it left behind, wherever it went, and record what the whole tree used.

    job_hook.py JOB_ID COMMAND [ARGS...]

The job is adopted before it runs anything (it waits for its stdin to close), so every
process it ever forks is in the slot. A Watch counts the job's events as they happen.
"""

import json
import subprocess
import sys
import threading

from tracker_client import Client, Limits, NotFound


def main():
    job_id, command = sys.argv[1], sys.argv[2:]
    slot = f"job-{job_id}"
    with Client() as tracker:
        tracker.create(slot, limits=Limits(memory_max_bytes=1 << 30, tasks_max=256))
        events = tracker.watch(slot)
        counts, killed = {}, threading.Event()

        def count():
            for e in events:
                counts[e.kind] = counts.get(e.kind, 0) + 1
                if e.kind == "KILL_DONE":
                    killed.set()

        threading.Thread(target=count, daemon=True).start()

        job = subprocess.Popen(["sh", "-c", 'read _; exec "$@"', "job", *command],
                               stdin=subprocess.PIPE)
        tracker.adopt(slot, job.pid)
        job.stdin.close()
        status = job.wait()

        left = tracker.processes(slot)
        print(f"job {job_id} exited with {status}; {len(left)} process(es) left behind:")
        for p in left:
            print(f"  pid {p.pid} (ppid {p.ppid}, started {p.start_time_ns} ns): {' '.join(p.cmdline)}")
        report = tracker.kill(slot)
        print(f"killed {report.killed} in {report.elapsed_ms:.1f} ms; complete: {report.complete}")
        u = tracker.usage(slot)
        print("usage:", json.dumps({
            "cpu_seconds": round(u.cpu_seconds, 3),
            "memory_peak_bytes": u.memory_peak_bytes,
            "processes_started": u.processes_started,
            "execs": u.execs,
        }))
        killed.wait(timeout=10)  # the stream's last word on the slot
        events.close()
        print(f"events: {dict(sorted(counts.items()))}; lost: {events.lost_total}")
        tracker.release(slot)
        try:
            tracker.usage(slot)
        except NotFound as e:
            print(f"released; now {e.code.name}: {e.details}")


if __name__ == "__main__":
    main()
