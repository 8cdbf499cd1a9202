//! `tracker daemon`: the gRPC API for batch systems (`tracker.v1`, with `grpc.health.v1` and
//! server reflection) on a Unix socket, and Prometheus metrics, over the same library the CLI
//! uses.
//!
//! The daemon holds no state of its own that matters: slots live in the pinned maps and the
//! registry, so tracking goes on while it is down and a restart loses nothing. It opens the
//! pins (loading the programs if they are absent), reads the kernel's event stream for Watch,
//! kills a slot whole when it goes over its memory limit on cgroup v1, and stops cleanly on
//! SIGTERM or SIGINT.
pub mod auth;
pub mod config;
mod hub;
mod listen;
mod metrics;
pub mod proto;
mod service;
mod socket;

use std::{net::SocketAddr, os::fd::OwnedFd, sync::Arc, thread, time::Duration};

use tokio::{
    net::{TcpListener, TcpSocket, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tonic::{
    codegen::http,
    service::{InterceptorLayer, Routes},
    transport::Server,
};

pub use config::DaemonConfig;

use crate::{
    error::{Error, IoContext as _, Result},
    events::EventKind,
    loader::{self, LoadOptions},
    paths::Paths,
    preflight,
    registry::StateLock,
    tracker::Tracker,
};

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(paths: Paths, config: DaemonConfig) -> Result<()> {
    preflight::require_root()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tracker-daemon")
        .build()
        .ctx(|| "starting the async runtime".into())?;
    runtime.block_on(serve(paths, config))
}

async fn serve(paths: Paths, config: DaemonConfig) -> Result<()> {
    let _one_daemon = StateLock::daemon(&paths)?;
    let tracker = Arc::new(open_or_load(&paths, &config)?);
    let (stop_tx, stopping) = watch::channel(false);

    let hub = hub::Hub::start(paths.clone(), config.watch_buffer_events);
    let metrics = Arc::new(metrics::Metrics::new(tracker.clone(), hub.clone()));
    // Only the API's own socket is needed to serve: the others, taken or broken, are warnings.
    let metrics_sock = config.metrics_socket.as_deref().and_then(|path| {
        optional("metrics socket", socket::bind(path, config.group_gid).and_then(unix_listener))
    });
    let metrics_tcp = match config.metrics_listen {
        Some(addr) => optional("metrics on TCP", bind_tcp(addr, "metrics_listen")),
        None => None,
    };
    let tcp = match config.tcp_listen {
        Some(addr) => optional("gRPC on TCP", bind_tcp(addr, "tcp_listen")),
        None => None,
    };
    // The API's socket last: whoever waits for it to answer (a batch system, systemd, a test)
    // then finds every other listener bound, not refusing connections.
    let sock = socket::bind(&config.socket, config.group_gid)?;
    let listeners = 1 + usize::from(metrics_sock.is_some()) + usize::from(metrics_tcp.is_some());
    let listeners = listeners + usize::from(tcp.is_some());
    let guard = listen::Guard {
        max_connections: listen::per_listener_cap(config.guard.max_connections, listeners),
        ..config.guard
    };
    if guard.max_connections < config.guard.max_connections {
        tracing::warn!(
            "max_connections lowered to {} per listener: the descriptor limit leaves no more \
             (raise LimitNOFILE)",
            guard.max_connections
        );
    }
    let (oom_stop_r, oom_stop_w) =
        rustix::pipe::pipe().map_err(|e| Error::io("creating a pipe", e.into()))?;
    let oom_guard = start_oom_guard(tracker.clone(), hub.clone(), metrics.clone(), oom_stop_r);

    let svc = service::Service {
        tracker: tracker.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        kill_timeout: config.kill_timeout,
        stopping: stopping.clone(),
    };
    let policy = auth::Policy {
        group_gid: config.group_gid,
        tcp_token: config.tcp_token.as_deref().map(Arc::from),
    };
    let metrics_policy = auth::Policy {
        group_gid: config.group_gid,
        tcp_token: config.metrics_token.as_deref().map(Arc::from),
    };
    let routes = routes(svc, config.max_request_bytes).await?;
    // Every service behind the peer check; the client's mistakes get the client's codes.
    // Dead peers are found by HTTP/2 pings and dropped.
    let server = || {
        let policy = policy.clone();
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(256))
            .layer(InterceptorLayer::new(move |req| policy.authorize(req)))
            .layer(tower::util::MapResponseLayer::new(client_errors::<tonic::body::Body>))
            .add_routes(routes.clone())
    };

    let metrics_where = [
        metrics_sock.as_ref().map(|(s, _)| format!("{} (same rules)", s.path().display())),
        metrics_tcp
            .as_ref()
            .and(config.metrics_listen)
            .map(|a| format!("http://{a}/metrics (token)")),
    ];
    let metrics_where: Vec<String> = metrics_where.into_iter().flatten().collect();
    tracing::info!(
        socket = %config.socket.display(),
        group = config.group_gid,
        metrics = ?metrics_where,
        tcp = ?tcp.as_ref().and(config.tcp_listen),
        max_connections = guard.max_connections,
        instance = paths.instance(),
        "serving"
    );
    eprintln!(
        "tracker daemon: serving {} (mode 0660, group {} = gid {}); metrics {}{}",
        config.socket.display(),
        config.group,
        config.group_gid,
        if metrics_where.is_empty() { "off".to_owned() } else { metrics_where.join(" and ") },
        tcp.as_ref()
            .and(config.tcp_listen)
            .map_or_else(String::new, |a| format!("; gRPC on TCP {a} (token)")),
    );

    let (sock, api) = unix_listener(sock)?;
    let incoming =
        listen::incoming("gRPC socket", api, guard, peer_stream(&tracker), stopping.clone());
    let unix =
        tokio::spawn(server().serve_with_incoming_shutdown(incoming, stopped(stopping.clone())));
    let tcp = tcp.map(|l| {
        let incoming = listen::incoming("gRPC on TCP", l, guard, |s| s, stopping.clone());
        tokio::spawn(server().serve_with_incoming_shutdown(incoming, stopped(stopping.clone())))
    });
    let mut metrics_tasks = vec![];
    let mut metrics_sock_file = None;
    if let Some((file, l)) = metrics_sock {
        let conns =
            listen::incoming("metrics socket", l, guard, peer_stream(&tracker), stopping.clone());
        let policy = metrics_policy.clone();
        metrics_tasks.push(tokio::spawn(metrics::serve(conns, metrics.clone(), move |s| {
            metrics::Gate::Peer { peer: s.peer(), policy: policy.clone() }
        })));
        metrics_sock_file = Some(file);
    }
    if let Some(l) = metrics_tcp {
        let conns = listen::incoming("metrics on TCP", l, guard, |s| s, stopping.clone());
        let policy = metrics_policy.clone();
        metrics_tasks.push(tokio::spawn(metrics::serve(conns, metrics.clone(), move |_| {
            metrics::Gate::Token(policy.clone())
        })));
    }

    let why = wait_for_signal().await?;
    tracing::info!("{why}: stopping");
    let _ = stop_tx.send(true);
    hub.stop();
    let _ = rustix::io::write(&oom_stop_w, &[1]);
    for task in [Some(unix), tcp].into_iter().flatten() {
        match task.await {
            Ok(Err(e)) => tracing::error!("gRPC server: {}", crate::error::chain(&e)),
            Err(e) => tracing::error!("gRPC server task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    for m in metrics_tasks {
        m.abort();
        let _ = m.await;
    }
    let _ = tokio::task::spawn_blocking(move || oom_guard.join()).await;
    drop((metrics_sock_file, sock));
    eprintln!("tracker daemon: stopped ({why}); tracking goes on in the kernel");
    Ok(())
}

/// The services: tracker.v1, grpc.health.v1, and reflection (v1, and v1alpha, which most
/// clients still ask for).
async fn routes(svc: service::Service, max_request_bytes: usize) -> Result<Routes> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<proto::tracker_server::TrackerServer<service::Service>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflect_err =
        |e: tonic_reflection::server::Error| Error::Daemon(format!("reflection: {e}"));
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(reflect_err)?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(reflect_err)?;
    let tracker_svc =
        proto::tracker_server::TrackerServer::new(svc).max_decoding_message_size(max_request_bytes);
    Ok(Routes::new(tracker_svc)
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// The client's mistakes as gRPC's status codes name them, where tonic says otherwise: a
/// request over the size limit (OUT_OF_RANGE from tonic) is RESOURCE_EXHAUSTED, one that does
/// not decode (INTERNAL from tonic) is INVALID_ARGUMENT. No method answers OUT_OF_RANGE for
/// anything else, and the daemon's own INTERNAL errors never carry the decoder's words.
fn client_errors<B>(mut res: http::Response<B>) -> http::Response<B> {
    let Some(status) = tonic::Status::from_header_map(res.headers()) else { return res };
    let code = match status.code() {
        tonic::Code::OutOfRange => tonic::Code::ResourceExhausted,
        tonic::Code::Internal if is_decode_error(status.message()) => tonic::Code::InvalidArgument,
        _ => return res,
    };
    if let Ok(v) = http::HeaderValue::from_str(&(code as i32).to_string()) {
        res.headers_mut().insert("grpc-status", v);
    }
    res
}

/// tonic's and prost's words for a request body that is not a message.
fn is_decode_error(message: &str) -> bool {
    ["failed to decode Protobuf message", "protocol error:", "Unexpected EOF decoding stream"]
        .iter()
        .any(|p| message.starts_with(p))
}

/// A Unix connection with its peer's credentials, and whether the peer is a job: tagged in
/// the kernel (a failed lookup counts as a job: refuse rather than serve a job).
fn peer_stream(
    tracker: &Arc<Tracker>,
) -> impl Fn(tokio::net::UnixStream) -> auth::PeerStream + use<> {
    let t = tracker.clone();
    move |s| auth::PeerStream::new(s, &|pid| !matches!(t.tag_of(pid), Ok(None)))
}

/// A socket's file, and its listener registered with the runtime.
fn unix_listener(sock: socket::Socket) -> Result<(socket::Socket, UnixListener)> {
    let std = sock.listener.try_clone().ctx(|| "duplicating the socket".into())?;
    let l = UnixListener::from_std(std).ctx(|| "registering the socket".into())?;
    Ok((sock, l))
}

/// The longest queue of connections the kernel keeps for the daemon to accept; it caps this
/// at `net.core.somaxconn` (4096 since 5.4).
const TCP_BACKLOG: u32 = 4096;

/// Bound as tokio does (`SO_REUSEADDR`), but with the backlog the Unix sockets get rather than
/// tokio's 128: connections beyond a listener's cap wait there, and a crowd that overflows it
/// makes the kernel answer with SYN cookies, which lose a connection whose client stays
/// silent.
fn bind_tcp(addr: SocketAddr, key: &str) -> Result<TcpListener> {
    let bind = || {
        let s = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(TCP_BACKLOG)
    };
    bind().map_err(|e: std::io::Error| Error::Daemon(format!("{addr}: {e} (set {key})")))
}

/// A listener the daemon can serve without: its failure is a warning, in the log and on
/// stderr, and the API goes on.
fn optional<T>(what: &str, r: Result<T>) -> Option<T> {
    r.map_err(|e| {
        tracing::warn!("{what}: {e}: not serving it");
        eprintln!("tracker daemon: warning: {what}: {e}: not serving it; the API goes on");
    })
    .ok()
}

fn open_or_load(paths: &Paths, config: &DaemonConfig) -> Result<Tracker> {
    let opened = match Tracker::open(paths.clone()) {
        Err(Error::NotLoaded(_)) => {
            let opts = LoadOptions {
                max_slots: config.max_slots,
                cgroup_parent: config.cgroup_parent.clone(),
                ..Default::default()
            };
            let report = loader::load(paths, &opts)?;
            for w in &report.warnings {
                tracing::warn!("{w}");
            }
            eprintln!(
                "tracker daemon: the programs were not loaded: loaded them (generation {})",
                report.generation
            );
            Tracker::open(paths.clone())
        }
        other => other,
    }?;
    // systemd removed the unit's empty cgroups when this service last stopped; the slots'
    // limits are in the registry.
    for w in opened.restore_slot_cgroups() {
        tracing::warn!("{w}");
        eprintln!("tracker daemon: warning: {w}");
    }
    Ok(opened)
}

/// The whole-slot OOM kill of cgroup v1, for every slot with a memory limit, on a thread of
/// its own until `stop` becomes readable.
fn start_oom_guard(
    tracker: Arc<Tracker>,
    hub: Arc<hub::Hub>,
    metrics: Arc<metrics::Metrics>,
    stop: OwnedFd,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        tracker.guard_oom(&stop, |slot, report| {
            tracing::warn!(
                slot,
                killed = report.killed,
                "slot went over its memory limit: killed whole"
            );
            metrics.observe_kill(report);
            hub.publish(EventKind::KillDone, slot);
        });
    })
}

/// Resolves once the daemon is stopping (or nothing can tell it to any more).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

async fn wait_for_signal() -> Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).ctx(|| "handling SIGTERM".into())?;
    let mut int = signal(SignalKind::interrupt()).ctx(|| "handling SIGINT".into())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_after(status: tonic::Status) -> String {
        let res = client_errors(status.into_http::<()>());
        res.headers().get("grpc-status").unwrap().to_str().unwrap().to_owned()
    }

    #[test]
    fn the_clients_mistakes_get_the_clients_codes() {
        let decode = tonic::Status::internal("failed to decode Protobuf message: invalid varint");
        assert_eq!(code_after(decode), "3");
        assert_eq!(code_after(tonic::Status::out_of_range("too large")), "8");
        // The daemon's own failures stay INTERNAL; other codes pass through.
        assert_eq!(code_after(tonic::Status::internal("reading the maps: EIO")), "13");
        assert_eq!(code_after(tonic::Status::not_found("no slot x")), "5");
    }
}
