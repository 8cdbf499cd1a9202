//! The daemon's settings: the `[daemon]` table of the site configuration
//! (`/etc/tracker/tracker.toml`, or `$TRACKER_CONFIG`, or `tracker daemon --config FILE`).
//! Every setting has a default, so the file and the table are optional; an unknown key is an
//! error, so a typo never passes for a default. `contrib/tracker.toml` documents them all.
use std::{
    fs,
    io::ErrorKind,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::listen::Guard;
use crate::{
    accounts,
    error::{Error, Result},
    loader::DEFAULT_MAX_SLOTS,
    paths::Paths,
};

/// The `[daemon]` table, as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// The gRPC Unix socket. Default: `tracker.sock` in the instance's state directory
    /// (`/run/tracker/tracker.sock`).
    pub socket: Option<PathBuf>,
    /// The group (name or gid) that owns the socket (mode 0660) and may make every call,
    /// besides root. Default `root`: root only.
    pub group: String,
    /// Prometheus metrics (HTTP, `GET /metrics`) on this Unix socket, with the API's rules
    /// (mode 0660, root and `group`; never a job). Default: `metrics.sock` beside the API's
    /// socket; empty: none.
    pub metrics_socket: Option<String>,
    /// Metrics over TCP as well, on this address; empty (the default): none. Needs
    /// `metrics_token_file`: a scrape must send `authorization: Bearer <token>`.
    pub metrics_listen: String,
    /// A root-only file holding the bearer token for TCP scrapes.
    pub metrics_token_file: Option<PathBuf>,
    /// Live connections per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long after connecting is closed.
    pub first_bytes_timeout_seconds: f64,
    /// gRPC over TCP as well, on this address; empty (the default): none. Needs
    /// `tcp_token_file`: TCP has no peer credentials, so every call must carry
    /// `authorization: Bearer <token>`.
    pub tcp_listen: String,
    /// A root-only file holding the bearer token for TCP calls.
    pub tcp_token_file: Option<PathBuf>,
    /// How long a KillSlot waits for the slot to empty when the request says nothing.
    pub kill_timeout_seconds: f64,
    /// The largest request accepted; a larger one is RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Events a Watch client may fall behind before the oldest are dropped for it (and a
    /// LOST event says how many).
    pub watch_buffer_events: usize,
    /// Slots the kernel maps make room for, when the daemon loads the programs itself.
    pub max_slots: u32,
    /// The slots' cgroup2 parent (relative to the root) when the daemon loads the programs
    /// itself; none: the delegated cgroup the daemon runs in (see cgroup/parent.rs).
    pub cgroup_parent: Option<PathBuf>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            socket: None,
            group: "root".into(),
            metrics_socket: None,
            metrics_listen: String::new(),
            metrics_token_file: None,
            max_connections: 512,
            first_bytes_timeout_seconds: 10.0,
            tcp_listen: String::new(),
            tcp_token_file: None,
            kill_timeout_seconds: 10.0,
            max_request_bytes: 64 * 1024,
            watch_buffer_events: 65_536,
            max_slots: DEFAULT_MAX_SLOTS,
            cgroup_parent: None,
        }
    }
}

/// The whole file: the daemon's table and the others it may hold (`[roots]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    #[serde(default)]
    daemon: DaemonSettings,
    /// Read by `--root-name` (see isolation.rs); accepted here so the file validates.
    #[serde(default)]
    #[allow(dead_code)]
    roots: toml::Table,
}

/// The settings, checked and resolved.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// The group as configured (a name or a number), for messages.
    pub group: String,
    pub group_gid: u32,
    pub metrics_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_token: Option<String>,
    pub tcp_listen: Option<SocketAddr>,
    pub tcp_token: Option<String>,
    pub kill_timeout: Duration,
    pub max_request_bytes: usize,
    pub watch_buffer_events: usize,
    pub max_slots: u32,
    pub cgroup_parent: Option<PathBuf>,
    /// The limits every listener works under.
    pub guard: Guard,
}

impl DaemonConfig {
    /// Read `file`; a missing file is the defaults unless `required` (it was named
    /// explicitly).
    pub fn load(paths: &Paths, file: &Path, required: bool) -> Result<Self> {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound && !required => String::new(),
            Err(e) => return Err(config_error(file, e.to_string())),
        };
        Self::parse(paths, file, &text)
    }

    pub fn parse(paths: &Paths, file: &Path, text: &str) -> Result<Self> {
        let site: SiteFile =
            toml::from_str(text).map_err(|e| config_error(file, e.message().to_owned()))?;
        Self::resolve(paths, file, site.daemon)
    }

    fn resolve(paths: &Paths, file: &Path, s: DaemonSettings) -> Result<Self> {
        let bad = |detail: String| config_error(file, detail);
        let addr = |key: &str, v: &str| -> Result<Option<SocketAddr>> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| bad(format!("{key} = {v:?} is not an address such as 127.0.0.1:9813")))
        };
        let group_gid = accounts::resolve_group(&s.group)
            .map_err(|e| bad(format!("group = {:?}: {e}", s.group)))?;
        let token =
            |listen: &Option<SocketAddr>, key: &str, file: &Option<PathBuf>| match (listen, file) {
                (None, _) => Ok(None),
                (Some(_), None) => Err(bad(format!(
                    "{key} needs {key_file}: TCP callers have no peer credentials",
                    key_file = key.replace("listen", "token_file")
                ))),
                (Some(_), Some(f)) => read_token(f).map(Some).map_err(&bad),
            };
        let tcp_listen = addr("tcp_listen", &s.tcp_listen)?;
        let tcp_token = token(&tcp_listen, "tcp_listen", &s.tcp_token_file)?;
        let metrics_listen = addr("metrics_listen", &s.metrics_listen)?;
        let metrics_token = token(&metrics_listen, "metrics_listen", &s.metrics_token_file)?;
        let socket = s.socket.unwrap_or_else(|| paths.socket_file());
        let metrics_socket = match s.metrics_socket.as_deref() {
            None => Some(socket.with_file_name("metrics.sock")),
            Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        if s.max_connections == 0 {
            return Err(bad("max_connections = 0: use at least 1".into()));
        }
        let first_bytes = Duration::try_from_secs_f64(s.first_bytes_timeout_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                bad(format!(
                    "first_bytes_timeout_seconds = {}: use > 0",
                    s.first_bytes_timeout_seconds
                ))
            })?;
        let kill_timeout = Duration::try_from_secs_f64(s.kill_timeout_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                bad(format!("kill_timeout_seconds = {}: use > 0", s.kill_timeout_seconds))
            })?;
        if s.max_request_bytes < 1024 {
            return Err(bad(format!(
                "max_request_bytes = {}: use at least 1024",
                s.max_request_bytes
            )));
        }
        if s.watch_buffer_events == 0 {
            return Err(bad("watch_buffer_events = 0: use at least 1".into()));
        }
        Ok(Self {
            socket,
            group: s.group,
            group_gid,
            metrics_socket,
            metrics_listen,
            metrics_token,
            tcp_listen,
            tcp_token,
            kill_timeout,
            max_request_bytes: s.max_request_bytes,
            watch_buffer_events: s.watch_buffer_events,
            max_slots: s.max_slots,
            cgroup_parent: s.cgroup_parent.filter(|p| !p.as_os_str().is_empty()),
            guard: Guard { max_connections: s.max_connections, first_bytes },
        })
    }
}

/// The token, from a file only root can read (a token others can read authorises them).
fn read_token(file: &Path) -> std::result::Result<String, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(file).map_err(|e| format!("token file {}: {e}", file.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "token file {} must be owned by root with mode 0600 (chmod 600)",
            file.display()
        ));
    }
    let token = fs::read_to_string(file)
        .map_err(|e| format!("token file {}: {e}", file.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        return Err(format!("token file {}: use a token of 16 characters or more", file.display()));
    }
    Ok(token)
}

fn config_error(file: &Path, detail: String) -> Error {
    Error::Config { path: file.to_owned(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig> {
        DaemonConfig::parse(&Paths::new("tracker").unwrap(), Path::new("t.toml"), text)
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, Path::new("/run/tracker/tracker.sock"));
        assert_eq!(c.group_gid, 0);
        // Metrics on a socket with the API's rules; nothing on TCP unless configured.
        assert_eq!(c.metrics_socket.as_deref(), Some(Path::new("/run/tracker/metrics.sock")));
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.guard.max_connections, 512);
        assert_eq!(c.tcp_listen, None);
        assert_eq!(c.kill_timeout, Duration::from_secs(10));
        assert_eq!(c.max_request_bytes, 65536);
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../contrib/tracker.toml");
        let site: SiteFile = toml::from_str(text).unwrap();
        // The example shows the defaults, except where it says otherwise.
        let d = site.daemon;
        assert_eq!(d.metrics_listen, DaemonSettings::default().metrics_listen);
        assert_eq!(d.kill_timeout_seconds, DaemonSettings::default().kill_timeout_seconds);
        assert_eq!(d.max_request_bytes, DaemonSettings::default().max_request_bytes);
        assert_eq!(d.watch_buffer_events, DaemonSettings::default().watch_buffer_events);
        // The installed file names no root that the site has not made.
        assert!(site.roots.is_empty(), "{:?}", site.roots);
    }

    #[test]
    fn settings_are_read() {
        let c = parse(
            "[daemon]\nsocket = \"/tmp/x.sock\"\ngroup = \"4242\"\nmetrics_socket = \"\"\n\
             kill_timeout_seconds = 2.5\n[roots]\nel9 = \"/srv/el9\"\n",
        )
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/x.sock"));
        assert_eq!(c.group_gid, 4242);
        assert_eq!(c.metrics_socket, None);
        assert_eq!(c.kill_timeout, Duration::from_millis(2500));
        let c = parse("[daemon]\nsocket = \"/srv/t/api.sock\"\n").unwrap();
        assert_eq!(c.metrics_socket.as_deref(), Some(Path::new("/srv/t/metrics.sock")));
    }

    #[test]
    fn mistakes_are_one_clear_line() {
        for (text, says) in [
            ("[daemon]\nsokcet = \"/x\"\n", "unknown field `sokcet`"),
            ("[daemon]\ngroup = \"no-such-group-xyz\"\n", "no group"),
            ("[daemon]\nmetrics_listen = \"localhost\"\n", "not an address"),
            ("[daemon]\ntcp_listen = \"127.0.0.1:9814\"\n", "needs tcp_token_file"),
            ("[daemon]\nmetrics_listen = \"127.0.0.1:9813\"\n", "needs metrics_token_file"),
            ("[daemon]\nmax_connections = 0\n", "at least 1"),
            ("[daemon]\nfirst_bytes_timeout_seconds = 0.0\n", "use > 0"),
            ("[daemon]\nkill_timeout_seconds = -1.0\n", "use > 0"),
            ("[daemon]\nmax_request_bytes = 10\n", "at least 1024"),
            ("[deamon]\n", "unknown field `deamon`"),
            ("[daemon\n", "t.toml"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: not one line: {e}");
        }
    }
}
