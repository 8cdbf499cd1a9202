//! The daemon against the node's other users: metrics only for root and the daemon's group
//! (and never for a job, which may not use the API either), TCP only with the token, a taken metrics address only a warning, the
//! API still answering while an ordinary user holds 2,000 idle connections, and requests
//! that do not decode refused as INVALID_ARGUMENT.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use tonic::Code;
use tracker::daemon::proto;
use tracker_tests::{
    Instance, attacker_for_anyone,
    daemon::{Daemon, TEST_GROUP, http_get},
    test_dir,
};

const NOBODY: u32 = 65534;
const TOKEN: &str = "metrics-token-for-tests";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A root-only token file holding `token`.
fn token_file(token: &str) -> std::path::PathBuf {
    let f = test_dir("token").join("token");
    fs::write(&f, token).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// `program` as nobody, in the daemon's group or in none.
fn as_nobody(program: &Path, in_group: bool) -> Command {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}")]);
    if in_group {
        c.arg(format!("--groups={TEST_GROUP}"));
    } else {
        c.arg("--clear-groups");
    }
    c.arg(program);
    c
}

/// `attacker get SOCKET /metrics` as nobody: its one line.
fn get_as_nobody(attacker: &Path, in_group: bool, socket: &Path) -> String {
    let out =
        as_nobody(attacker, in_group).arg("get").arg(socket).arg("/metrics").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn metrics_are_for_root_and_the_group_only_and_never_for_a_job() {
    let Some(inst) = Instance::start() else { return };
    let port = free_port();
    let tf = token_file(TOKEN);
    let d = Daemon::start(
        &inst,
        &format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nmetrics_token_file = \"{}\"",
            tf.display()
        ),
    );
    inst.cli_ok(&["create", "secret-slot", "--owner", "1234"]);
    // Root, on the socket: everything.
    assert!(d.scrape().contains("slot=\"secret-slot\""), "no slot series");
    let meta = fs::metadata(&d.metrics).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o660, 0, TEST_GROUP));
    // An ordinary user cannot connect; one in the daemon's group reads them.
    let attacker = attacker_for_anyone();
    let stranger = get_as_nobody(&attacker, false, &d.metrics);
    assert_eq!(stranger, "connect denied EACCES");
    let member = get_as_nobody(&attacker, true, &d.metrics);
    assert_eq!(member.split(' ').nth(1), Some("200"), "{member}");
    // A job, even root's, reads nothing: not its own slot's labels, not another uid's.
    let out = inst.cli_ok(&[
        "run",
        "--slot",
        "nosy",
        "--",
        tracker_tests::ATTACKER,
        "get",
        d.metrics.to_str().unwrap(),
        "/metrics",
    ]);
    assert_eq!(out.split(' ').nth(1), Some("403"), "a job read the metrics: {out}");
    // Nor may it use the API (to kill or release other slots): root outside a slot may.
    let probe = env!("CARGO_BIN_EXE_grpc_probe");
    let sock = d.socket.to_str().unwrap();
    let out = inst.cli_ok(&["run", "--slot", "nosy-api", "--", probe, sock]);
    assert!(out.starts_with("denied PermissionDenied") && out.contains("runs in a slot"), "{out}");
    let out = Command::new(probe).arg(sock).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "), "{out:?}");
    // TCP: the bearer token or nothing.
    let tcp_get = |token: Option<&str>| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        http_get(&mut s, "/metrics", token)
    };
    assert_eq!(tcp_get(None).0, 401);
    assert_eq!(tcp_get(Some("not-the-token-at-all")).0, 401);
    let (status, body) = tcp_get(Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slot=\"secret-slot\""));
    inst.cli_ok(&["release", "secret-slot"]);
}

#[test]
fn a_taken_metrics_address_is_a_warning_and_the_api_serves() {
    let Some(inst) = Instance::start() else { return };
    // Someone else holds the port first.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let tf = token_file(TOKEN);
    let d = Daemon::start(
        &inst,
        &format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nmetrics_token_file = \"{}\"",
            tf.display()
        ),
    );
    let (rt, mut c) = d.client();
    rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap();
    let log = d.log();
    assert!(log.contains("warning: metrics on TCP") && log.contains("in use"), "{log}");
    // The socket's metrics are served all the same.
    assert!(d.scrape().contains("tracker_slots"));
    drop(squatter);
}

/// Connections to every listener, as nobody, held open and silent, by `procs` processes.
struct Crowd(Vec<std::process::Child>);

impl Crowd {
    fn hold(
        attacker: &Path,
        per_process: usize,
        procs: usize,
        targets: &[String],
    ) -> (Self, u64, u64) {
        let (mut opened, mut refused) = (0, 0);
        let mut children = vec![];
        for _ in 0..procs {
            let mut c = as_nobody(attacker, false)
                .arg("hold")
                .arg(per_process.to_string())
                .args(targets)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            assert_eq!(n.len(), 2, "attacker said {line:?}");
            opened += n[0];
            refused += n[1];
            children.push(c);
        }
        (Self(children), opened, refused)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_api_answers_while_a_user_holds_two_thousand_idle_connections() {
    let Some(inst) = Instance::start() else { return };
    let (grpc_port, metrics_port) = (free_port(), free_port());
    let tf = token_file(TOKEN);
    // The smallest descriptor limit a daemon meets (systemd's default soft limit, here hard
    // too, so that the daemon cannot raise it).
    let d = Daemon::start_limited(
        &inst,
        &format!(
            "metrics_listen = \"127.0.0.1:{metrics_port}\"\nmetrics_token_file = \"{tf}\"\n\
             tcp_listen = \"127.0.0.1:{grpc_port}\"\ntcp_token_file = \"{tf}\"",
            tf = tf.display()
        ),
        1024,
    );
    let (rt, mut c) = d.client();
    let t0 = Instant::now();
    rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap();
    let before = t0.elapsed();

    let attacker = attacker_for_anyone();
    let targets = [
        format!("127.0.0.1:{grpc_port}"),
        format!("127.0.0.1:{metrics_port}"),
        d.socket.display().to_string(),
        d.metrics.display().to_string(),
    ];
    // Half the attempts go to the Unix sockets, which nobody may not connect to.
    let cpu_before = cpu_ticks(d.pid());
    let (crowd, opened, refused) = Crowd::hold(&attacker, 1000, 4, &targets);
    eprintln!(
        "nobody holds {opened} TCP connections; {refused} refused (the Unix sockets are 0660)"
    );
    assert_eq!((opened, refused), (2000, 2000), "nobody reached a Unix socket, or TCP refused");

    // A fresh client, and the one from before: both answered, whatever the crowd holds.
    let t0 = Instant::now();
    let (rt2, mut c2) = d.client();
    rt2.block_on(c2.list_slots(proto::ListSlotsRequest {})).unwrap();
    rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap();
    let during = t0.elapsed();
    assert!(d.scrape().contains("tracker_slots"));
    eprintln!("ListSlots: {before:?} before, {during:?} with 2,000 idle connections held");
    eprintln!("daemon CPU meanwhile: {} ticks", cpu_ticks(d.pid()) - cpu_before);
    drop(crowd);
    // The daemon is alive and its log holds no flood.
    rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap();
    let lines = d.log().lines().count();
    assert!(lines < 200, "{lines} log lines");
}

#[test]
fn out_of_descriptors_the_daemon_backs_off_and_recovers() {
    let Some(inst) = Instance::start() else { return };
    let port = free_port();
    let tf = token_file(TOKEN);
    // A known limit to start with, so that each listener's cap is the default 512; silent
    // connections kept for an hour, so that the daemon runs out of descriptors however slowly
    // it accepts (with the default 10 s, a slow machine closes them as fast as it accepts).
    let d = Daemon::start_limited(
        &inst,
        &format!(
            "tcp_listen = \"127.0.0.1:{port}\"\ntcp_token_file = \"{}\"\n\
             first_bytes_timeout_seconds = 3600.0",
            tf.display()
        ),
        4096,
    );
    // Its caps were sized for the limit it started with; take most descriptors away, as a
    // lower limit or a leak elsewhere would, so that accepting fails with EMFILE.
    // Every connection of the crowd must reach the daemon: a backlog it overflows makes the
    // kernel answer with SYN cookies, and a cookie connection whose last ACK meets a full queue
    // is lost for good when its client says nothing (tokio's default of 128 did that).
    let backlog = listen_backlog(port);
    assert!(backlog >= 1000, "the TCP listener's backlog is {backlog}, fewer than the crowd");
    let pid = d.pid().to_string();
    let ok = Command::new("prlimit").args(["--pid", &pid, "--nofile=300:300"]).status().unwrap();
    assert!(ok.success());
    let attacker = attacker_for_anyone();
    let (crowd, opened, refused) = Crowd::hold(&attacker, 1000, 1, &[format!("127.0.0.1:{port}")]);
    // More than the 300 descriptors, and fewer than the listener's cap of 512: accepting runs
    // out of descriptors before the cap stops it.
    assert_eq!((opened, refused), (1000, 0), "the crowd did not reach the TCP listener");
    let accept_lines = || d.log().lines().filter(|l| l.contains("accept:")).count();
    assert!(
        tracker_tests::wait_for(std::time::Duration::from_secs(60), || accept_lines() > 0),
        "no accept error logged: {}",
        d.log()
    );
    assert!(d.log().contains("Too many open files"), "{}", d.log());
    // Backed off and logged once per 10 s, never a loop writing a line per failure.
    let cpu = cpu_ticks(d.pid());
    drop(crowd);
    let lines = accept_lines();
    assert!(lines <= 10, "{lines} accept errors logged");
    // The crowd gone, the API answers.
    let (rt, mut c) = d.client();
    rt.block_on(c.list_slots(proto::ListSlotsRequest {})).unwrap();
    eprintln!("{lines} accept-error line(s) logged; daemon CPU so far {cpu} ticks");
}

/// The backlog of the TCP listener on 127.0.0.1:`port`, as the kernel reports it.
fn listen_backlog(port: u16) -> u64 {
    let out = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q (connections waiting), Send-Q (the backlog), local address, peer.
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "ss said {out:?}");
    fields[2].parse().unwrap()
}

/// User and system CPU of `pid` so far, in clock ticks (for the record, not asserted).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A gRPC codec that sends raw bytes as the request message and ignores the response.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

#[test]
fn a_request_that_does_not_decode_is_invalid_argument() {
    let Some(inst) = Instance::start() else { return };
    let d = Daemon::start(&inst, "");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let channel = rt.block_on(tracker_tests::daemon::connect(&d.socket));
    let mut grpc = tonic::client::Grpc::new(channel);
    // A field tag with wire type 7 (none such), a varint that never ends, a string field that
    // is not UTF-8.
    for body in [vec![0x0f], vec![0x08, 0xff, 0xff], vec![0x0a, 0x02, 0xc3, 0x28]] {
        let e = rt
            .block_on(async {
                grpc.ready().await.unwrap();
                grpc.unary(
                    tonic::Request::new(body.clone()),
                    "/tracker.v1.Tracker/GetUsage".parse().unwrap(),
                    Raw,
                )
                .await
            })
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{body:x?}: {e:?}");
    }
}
