//! `tracker daemon` on the real kernel: the gRPC API driven by a Python client this project
//! did not write; the socket's security; a restart that loses nothing; one registry shared
//! with the CLI; Watch's explicit losses; the optional TCP listener's token.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use tonic::Code;
use tracker::daemon::proto::{self, EventKind, tracker_client::TrackerClient};
use tracker_tests::{
    ESCAPE, Instance,
    daemon::{Daemon, TEST_GROUP},
    marker, processes_named, skip, test_dir, wait_for,
};

const T: Duration = Duration::from_secs(20);

#[test]
fn a_python_client_drives_the_whole_api() {
    let Some(inst) = Instance::start() else { return };
    let Some(python) = std::env::var_os("TRACKER_TEST_PYTHON") else {
        skip("no Python gRPC client: `cargo xtask test` installs it (TRACKER_TEST_PYTHON)");
        return;
    };
    let d = Daemon::start(&inst, "");
    // The unprivileged runs must read the script: a copy beside the socket.
    let script = d.dir.join("client_test.py");
    fs::copy(workspace().join("tests/python/client_test.py"), &script).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .arg("--socket")
        .arg(&d.socket)
        .arg("--proto")
        .arg(workspace().join("proto"))
        .arg("--metrics")
        .arg(format!("unix:{}", d.metrics.display()))
        .args(["--slot", &format!("py{}", std::process::id())])
        .args(["--group", &TEST_GROUP.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client failed: {}", d.log());
    assert!(text.contains("python client: all checks passed"), "{text}");
}

#[test]
fn the_socket_is_root_and_the_group_only() {
    let Some(inst) = Instance::start() else { return };
    let d = Daemon::start(&inst, "");
    let meta = fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (0, TEST_GROUP));
    // A second daemon for the same instance refuses to start, and leaves the first alone.
    let second = inst.cli().args(["daemon", "--config"]).arg(&d.config).output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another daemon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
}

#[test]
fn sigterm_stops_it_cleanly_and_a_restart_loses_nothing() {
    let Some(inst) = Instance::start() else { return };
    let mut d = Daemon::start(&inst, "");
    let m = marker("dsurv");
    let go = d.dir.join("go");
    // A job that double-forks a daemon once told to, which will be while no daemon runs.
    let script = format!(
        "while [ ! -e {g} ]; do sleep 0.02; done; {ESCAPE} daemonize {m}; exec {ESCAPE} sleep {m}",
        g = go.display()
    );
    inst.cli_ok(&["run", "--detach", "--slot", "surv", "--", "sh", "-c", &script]);
    {
        let (rt, mut c) = d.client();
        let u = rt.block_on(c.get_usage(proto::GetUsageRequest { slot: "surv".into() })).unwrap();
        // The shell, and now and then its `sleep 0.02`.
        assert!(u.into_inner().usage.unwrap().tasks_live >= 1);
    }
    let status = d.stop();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(!d.socket.exists(), "the socket was left behind");
    assert!(d.log().contains("tracking goes on in the kernel"), "{}", d.log());

    fs::write(&go, "").unwrap();
    assert!(wait_for(T, || processes_named(&m).len() == 2));

    // SIGKILL this time: no cleanup at all; the next start replaces the stale socket.
    d.restart();
    // SAFETY: kill has no memory effects; the pid is our running child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    let _ = d.stop();
    assert!(d.socket.exists(), "a SIGKILLed daemon cannot remove its socket");
    d.restart();

    let (rt, mut c) = d.client();
    let slots = rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap().into_inner().slots;
    let surv = slots.iter().find(|s| s.slot.as_ref().unwrap().name == "surv").unwrap();
    assert_eq!(surv.tasks_live, 2, "{surv:?}");
    let procs = rt
        .block_on(
            c.list_processes(proto::ListProcessesRequest { slot: "surv".into(), threads: false }),
        )
        .unwrap()
        .into_inner()
        .processes;
    let listed: BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
    assert_eq!(listed, processes_named(&m).into_iter().collect());
    let report = rt
        .block_on(
            c.kill_slot(proto::KillSlotRequest { slot: "surv".into(), timeout_seconds: None }),
        )
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.killed, 2);
    assert!(processes_named(&m).is_empty());
}

#[test]
fn the_cli_and_the_daemon_share_one_registry() {
    let Some(inst) = Instance::start() else { return };
    let d = Daemon::start(&inst, "");
    const EACH: usize = 5;
    thread::scope(|s| {
        for w in 0..4 {
            let inst = &inst;
            s.spawn(move || {
                for i in 0..EACH {
                    inst.cli_ok(&["create", &format!("cli-{w}-{i}")]);
                }
            });
            let d = &d;
            s.spawn(move || {
                let (rt, mut c) = d.client();
                for i in 0..EACH {
                    let req = proto::CreateSlotRequest {
                        name: format!("grpc-{w}-{i}"),
                        owner_uid: Some(1000 + w),
                        ..Default::default()
                    };
                    rt.block_on(c.create_slot(req)).unwrap();
                }
            });
        }
    });
    let (rt, mut c) = d.client();
    let slots = rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap().into_inner().slots;
    let seen: Vec<(String, u32)> = slots
        .iter()
        .map(|s| {
            let s = s.slot.as_ref().unwrap();
            (s.name.clone(), s.id)
        })
        .collect();
    assert_eq!(seen.len(), 8 * EACH, "{seen:?}");
    let ids: BTreeSet<u32> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), seen.len(), "two slots share an id: {seen:?}");
    let cli: serde_json::Value = serde_json::from_str(&inst.cli_ok(&["slots", "--json"])).unwrap();
    let cli_names: BTreeSet<&str> =
        cli.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let grpc_names: BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(cli_names, grpc_names);
    // Each face releases what the other made.
    for (name, _) in &seen {
        if name.starts_with("cli-") {
            rt.block_on(c.release_slot(proto::ReleaseSlotRequest { slot: name.clone() })).unwrap();
        } else {
            inst.cli_ok(&["release", name]);
        }
    }
    let left = rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap().into_inner().slots;
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_daemon_loads_the_programs_when_they_are_absent() {
    let Some(inst) = Instance::start() else { return };
    inst.cli_ok(&["unload"]);
    assert!(!inst.paths.pin_dir().exists());
    let d = Daemon::start(&inst, "");
    assert!(d.log().contains("loaded them"), "{}", d.log());
    let st = inst.cli_ok(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["loaded"], true, "{st}");
    assert!(st["programs"].as_array().unwrap().iter().all(|p| p["ready"] == true), "{st}");
}

/// A client that falls behind loses its oldest events, and is told exactly how many: the
/// gaps in the sequence numbers it sees add up to the losses it is told of.
///
/// The loss is made certain, not likely: the client reads nothing until the daemon reports it
/// stalled (its queue, the HTTP/2 window and the socket are full, so the daemon's forwarder
/// for it waits), and then until the daemon has published more events than its per-client
/// buffer holds. Whatever the transport buffers, those events cannot all reach the client.
#[test]
fn a_slow_watcher_is_told_exactly_what_it_lost() {
    const BUFFER: u64 = 16;
    let Some(inst) = Instance::start() else { return };
    let d = Daemon::start(&inst, &format!("watch_buffer_events = {BUFFER}"));
    let (rt, mut c) = d.client_small_window(1024);
    // Every slot's events: nothing is filtered out, so every gap in the numbering is a loss.
    let mut stream =
        rt.block_on(c.watch(proto::WatchRequest { slot: String::new() })).unwrap().into_inner();
    let storm = |name: &str| {
        let script = "for i in $(seq 100); do /bin/true; done";
        let out = inst.cli_output(&["run", "--slot", name, "--", "sh", "-c", script]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Bounded: each storm is 300 events or more; the client's path holds a few thousand.
    let mut storms = 0;
    while metric(&d.scrape(), "tracker_watch_clients_stalled") < 1.0 {
        assert!(storms < 200, "{storms} storms and the client never stalled");
        storm(&format!("fill-{storms}"));
        storms += 1;
    }
    // From here the forwarder waits on this client, which reads nothing: every event
    // published now stays in the daemon's buffer of 16 or pushes one out of it.
    let at_stall = metric(&d.scrape(), "tracker_events_published_total");
    storm("storm");
    let published = |want: f64| metric(&d.scrape(), "tracker_events_published_total") >= want;
    // The storm's slot-empty comes after its exits; wait for it to be published too.
    assert!(wait_for(T, || published(at_stall + (BUFFER * 10) as f64)), "events not published");
    let mut events = vec![];
    rt.block_on(async {
        while let Ok(Ok(Some(r))) =
            tokio::time::timeout(tracker_tests::scaled(T), stream.message()).await
        {
            let e = r.event.unwrap();
            let last = e.kind() == EventKind::SlotEmpty && e.slot == "storm";
            events.push(e);
            if last {
                break;
            }
        }
    });
    let last = events.last();
    assert!(
        last.is_some_and(|e| e.kind() == EventKind::SlotEmpty && e.slot == "storm"),
        "{last:?}"
    );
    let lost: Vec<&proto::Event> = events.iter().filter(|e| e.kind() == EventKind::Lost).collect();
    assert!(!lost.is_empty(), "a stalled client and {BUFFER}+ events, yet nothing lost");
    assert!(lost.iter().all(|e| e.lost_reason() == proto::LostReason::ClientTooSlow), "{lost:?}");
    let told: u64 = lost.iter().map(|e| e.lost).sum();
    // The daemon numbers from 1; this client subscribed before the first event.
    let numbered: Vec<u64> =
        std::iter::once(0).chain(events.iter().filter(|e| e.seq != 0).map(|e| e.seq)).collect();
    assert!(numbered.windows(2).all(|w| w[0] < w[1]), "out of order: {numbered:?}");
    let gaps: u64 = numbered.windows(2).map(|w| w[1] - w[0] - 1).sum();
    assert_eq!(gaps, told, "the numbering skips {gaps} events, the client was told of {told}");
    let m = d.scrape();
    let dropped = metric(&m, "tracker_events_lost_total{reason=\"client_too_slow\"}");
    assert_eq!(dropped, told as f64, "metrics say {dropped}, the client was told {told}");
    eprintln!(
        "{storms} storms to stall; {} events received, {told} lost and announced",
        events.len()
    );
}

#[test]
fn tcp_needs_the_token() {
    let Some(inst) = Instance::start() else { return };
    let dir = test_dir("token");
    let token = dir.join("token");
    fs::write(&token, "s3cret-token-for-tests").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tcp =
        format!("tcp_listen = \"127.0.0.1:{port}\"\ntcp_token_file = \"{}\"", token.display());

    // A token others can read is refused at start, in one line.
    let cfg = dir.join("bad.toml");
    fs::write(
        &cfg,
        format!("[daemon]\nsocket = \"{}/s.sock\"\nmetrics_listen = \"\"\n{tcp}\n", dir.display()),
    )
    .unwrap();
    let out = inst.cli().args(["daemon", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mode 0600"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let _d = Daemon::start(&inst, &tcp);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let channel = rt.block_on(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect(),
    );
    let channel = channel.unwrap();
    let mut anon = TrackerClient::new(channel.clone());
    let e = rt.block_on(anon.list_slots(proto::ListSlotsRequest {})).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut wrong = TrackerClient::with_interceptor(channel.clone(), bearer("not-the-token"));
    let e = rt.block_on(wrong.list_slots(proto::ListSlotsRequest {})).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut good = TrackerClient::with_interceptor(channel, bearer("s3cret-token-for-tests"));
    rt.block_on(
        good.create_slot(proto::CreateSlotRequest { name: "tcp".into(), ..Default::default() }),
    )
    .unwrap();
    assert!(inst.cli_ok(&["slots"]).contains("tcp"));
    let _ = fs::remove_dir_all(&dir);
}

fn bearer(token: &'static str) -> impl tonic::service::Interceptor + Clone {
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(req)
    }
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}
