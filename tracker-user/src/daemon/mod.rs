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
mod metrics;
pub mod proto;
mod service;
mod socket;

use std::{os::fd::OwnedFd, sync::Arc, thread};

use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_stream::{StreamExt as _, wrappers::UnixListenerStream};
use tonic::{
    codegen::http,
    service::{InterceptorLayer, Routes},
    transport::{Server, server::TcpIncoming},
};

pub use config::DaemonConfig;

use crate::{
    error::{Error, IoContext as _, Result},
    events::EventKind,
    loader::{self, LoadOptions},
    paths::Paths,
    registry::StateLock,
    sys,
    tracker::Tracker,
};

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(paths: Paths, config: DaemonConfig) -> Result<()> {
    sys::require_root()?;
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
    let sock = socket::bind(&config.socket, config.group_gid)?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let tcp = match config.tcp_listen {
        Some(addr) => Some(
            TcpIncoming::bind(addr)
                .map_err(|e| Error::Daemon(format!("gRPC on TCP {addr}: {e} (set tcp_listen)")))?,
        ),
        None => None,
    };
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
    let routes = routes(svc, config.max_request_bytes).await?;
    // Every service behind the peer check; oversized requests are RESOURCE_EXHAUSTED.
    let server = || {
        let policy = policy.clone();
        Server::builder()
            .layer(InterceptorLayer::new(move |req| policy.authorize(req)))
            .layer(tower::util::MapResponseLayer::new(
                too_large_is_resource_exhausted::<tonic::body::Body>,
            ))
            .add_routes(routes.clone())
    };

    tracing::info!(
        socket = %config.socket.display(),
        group = config.group_gid,
        metrics = ?config.metrics_listen,
        tcp = ?config.tcp_listen,
        instance = paths.instance(),
        "serving"
    );
    eprintln!(
        "tracker daemon: serving {} (mode 0660, group {} = gid {}); metrics {}{}",
        config.socket.display(),
        config.group,
        config.group_gid,
        config
            .metrics_listen
            .map_or_else(|| "off".to_owned(), |a| format!("on http://{a}/metrics")),
        config.tcp_listen.map_or_else(String::new, |a| format!("; gRPC on TCP {a} (token)")),
    );

    let listener =
        UnixListener::from_std(sock.listener.try_clone().ctx(|| "duplicating the socket".into())?)
            .ctx(|| "registering the socket".into())?;
    let incoming = UnixListenerStream::new(listener).map(|s| s.map(auth::PeerStream::new));
    let unix =
        tokio::spawn(server().serve_with_incoming_shutdown(incoming, stopped(stopping.clone())));
    let tcp = tcp.map(|incoming| {
        tokio::spawn(server().serve_with_incoming_shutdown(incoming, stopped(stopping.clone())))
    });
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(l, metrics, stopping.clone())));

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
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    let _ = tokio::task::spawn_blocking(move || oom_guard.join()).await;
    drop(sock);
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

/// tonic answers a request over the size limit with OUT_OF_RANGE, gRPC's status codes say
/// RESOURCE_EXHAUSTED; no method answers OUT_OF_RANGE for anything else.
fn too_large_is_resource_exhausted<B>(mut res: http::Response<B>) -> http::Response<B> {
    const OUT_OF_RANGE: &str = "11";
    if res.headers().get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE) {
        let code = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&code) {
            res.headers_mut().insert("grpc-status", v);
        }
    }
    res
}

fn open_or_load(paths: &Paths, config: &DaemonConfig) -> Result<Tracker> {
    match Tracker::open(paths.clone()) {
        Err(Error::NotLoaded(_)) => {
            let report = loader::load(paths, &LoadOptions { max_slots: config.max_slots })?;
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
    }
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
