//! A `tracker daemon` for a test instance, in a directory of its own (socket, config, logs),
//! stopped when dropped; and a gRPC client on its socket.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tracker::daemon::proto::tracker_client::TrackerClient;

use crate::{Instance, test_dir, wait_exit, wait_for};

/// A gid for the daemon's group that no user of the machine has.
pub const TEST_GROUP: u32 = 4242;

pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The metrics socket (same access rules as the API's).
    pub metrics: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    instance: String,
    nofile: Option<u64>,
}

impl Daemon {
    /// Start a daemon for `inst` with `extra` appended to its `[daemon]` table; wait until
    /// its socket answers.
    pub fn start(inst: &Instance, extra: &str) -> Self {
        Self::for_instance(&inst.name, extra)
    }

    /// `start`, with the daemon's descriptor limit (soft and hard) set to `nofile`.
    pub fn start_limited(inst: &Instance, extra: &str, nofile: u64) -> Self {
        Self::spawned(&inst.name, extra, Some(nofile))
    }

    /// The same, for the tracker instance named `instance`.
    pub fn for_instance(instance: &str, extra: &str) -> Self {
        Self::spawned(instance, extra, None)
    }

    fn spawned(instance: &str, extra: &str, nofile: Option<u64>) -> Self {
        // Other users (the client tests' unprivileged runs) reach the socket through it.
        let dir = test_dir("daemon");
        let socket = dir.join("tracker.sock");
        let metrics = dir.join("metrics.sock");
        let config = dir.join("tracker.toml");
        fs::write(
            &config,
            format!(
                "[daemon]\nsocket = \"{}\"\ngroup = \"{TEST_GROUP}\"\nmetrics_socket = \"{}\"\n{extra}\n",
                socket.display(),
                metrics.display()
            ),
        )
        .unwrap();
        let mut d = Self {
            metrics,
            dir,
            socket,
            config,
            child: None,
            instance: instance.to_owned(),
            nofile,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = std::process::Command::new(crate::tracker_bin());
        cmd.args(["--instance", &self.instance, "daemon", "--config"])
            .arg(&self.config)
            .env_remove("TRACKER_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt as _;
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            // SAFETY: setrlimit between fork and exec, on a local.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            };
        }
        let child = cmd.spawn().unwrap();
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
        assert!(up, "the daemon did not start: {}", self.log());
    }

    /// Start it again after `stop`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is running");
        self.spawn();
    }

    /// SIGTERM, and wait (at most 30 s) for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the daemon ignored SIGTERM: {}", self.log()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `GET /metrics` on the metrics socket: the body (panics unless 200).
    pub fn scrape(&self) -> String {
        let (status, body) = http_get_unix(&self.metrics, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A client on the socket, and the runtime it runs on.
    pub fn client(&self) -> (tokio::runtime::Runtime, TrackerClient<Channel>) {
        let rt = client_runtime();
        let channel = rt.block_on(connect(&self.socket));
        (rt, TrackerClient::new(channel))
    }

    /// The same, with an HTTP/2 stream window of `bytes` (see [`connect_small_window`]).
    pub fn client_small_window(
        &self,
        bytes: u32,
    ) -> (tokio::runtime::Runtime, TrackerClient<Channel>) {
        let rt = client_runtime();
        let channel = rt.block_on(connect_small_window(&self.socket, bytes));
        (rt, TrackerClient::new(channel))
    }
}

/// A client's runtime: one worker thread drives the connection while the test does other
/// things between its calls, as a real client's does. On a current-thread runtime nothing
/// answers the daemon's HTTP/2 keepalive pings between calls, and where those things take
/// longer than the keepalive (a slow VM), the daemon rightly closes the connection.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("daemon log ({}):\n{}", self.dir.display(), self.log());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Channel {
    connect_endpoint(path, Endpoint::from_static("http://localhost")).await
}

/// A channel that lets the daemon send at most `bytes` of a stream's data ahead of what the
/// application has read (HTTP/2's stream window), so that a client that stops reading fills
/// its connection after a few events rather than megabytes of them.
pub async fn connect_small_window(path: &Path, bytes: u32) -> Channel {
    let e = Endpoint::from_static("http://localhost").initial_stream_window_size(Some(bytes));
    connect_endpoint(path, e).await
}

async fn connect_endpoint(path: &Path, endpoint: Endpoint) -> Channel {
    let path = path.to_owned();
    // The URI is not used for the connection, only as :authority ("localhost").
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

/// `GET target` over HTTP/1.0 on the Unix socket at `path`: (status code, body).
pub fn http_get_unix(path: &Path, target: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
    http_get(&mut s, target, None)
}

/// `GET target` over HTTP/1.0 on `s`, with `authorization: Bearer TOKEN` if given.
pub fn http_get(
    s: &mut (impl std::io::Read + std::io::Write),
    target: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {target} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}
