//! Prometheus metrics (OpenMetrics text), in base units: per slot what `tracker stat` reads,
//! labelled by slot name and owner uid, read from the kernel at each scrape (one pass over the
//! tasks for every slot); and the tracker's own health: programs attached, events lost, kills
//! and how long they took.
use std::sync::Arc;

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tracker_common::SlotCounts;

use super::{
    auth::{Peer, Policy},
    hub::Hub,
    listen::Guarded,
};
use crate::{
    status,
    tracker::{KillReport, Tracker},
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    kill_seconds: Histogram,
    kills: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(tracker: Arc<Tracker>, hub: Arc<Hub>) -> Self {
        let mut registry = Registry::default();
        // 1 ms to about 16 s.
        let kill_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        registry.register(
            "tracker_kill_duration_seconds",
            "How long kills took, from doom to an empty slot (or the timeout)",
            kill_seconds.clone(),
        );
        let kills = Family::<Labels, Counter>::default();
        registry.register(
            "tracker_kills",
            "Kills done by the daemon, by result (complete: the slot was emptied)",
            kills.clone(),
        );
        // Read once: the kernel does not change under a running daemon, and parsing its BTF
        // (megabytes) at every scrape took a second in a debug build, thirty under emulation.
        let kernel_features =
            crate::btf::kernel_offsets(tracker.paths().btf()).map(|o| o.features).ok();
        registry.register_collector(Box::new(KernelCollector { tracker, hub, kernel_features }));
        Self { registry, kill_seconds, kills }
    }

    pub fn observe_kill(&self, r: &KillReport) {
        self.kill_seconds.observe(r.elapsed_ms / 1e3);
        let result = if r.is_complete() { "complete" } else { "survivors" };
        self.kills.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// The exposition, read now.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What the kernel maps say now.
#[derive(Debug)]
struct KernelCollector {
    tracker: Arc<Tracker>,
    hub: Arc<Hub>,
    /// The kernel's features as the loader reads them (`None`: unreadable, list every program).
    kernel_features: Option<u32>,
}

/// One metric without labels.
fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(enc.encode_descriptor(name, help, None, value.metric_type())?)
}

/// One metric family: a name, its help, its type, and a value per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.tracker;
        // A failed read is an absent family (and a logged error), not a failed scrape.
        let usage =
            t.usage_all().map_err(|e| tracing::error!("metrics: usage: {e}")).unwrap_or_default();
        let owners: std::collections::BTreeMap<String, u32> = crate::registry::read(t.paths())
            .map(|r| r.slots.into_iter().map(|s| (s.name, s.owner_uid)).collect())
            .unwrap_or_default();
        let labels = |slot: &str| -> Labels {
            vec![
                ("slot", slot.to_owned()),
                ("owner_uid", owners.get(slot).copied().unwrap_or_default().to_string()),
            ]
        };
        let with_mode = |slot: &str, mode: &str| -> Labels {
            let mut l = labels(slot);
            l.push(("mode", mode.to_owned()));
            l
        };
        let counter =
            |enc: &mut DescriptorEncoder, name: &str, help: &str, f: fn(&crate::Usage) -> u64| {
                family(
                    enc,
                    name,
                    help,
                    MetricType::Counter,
                    usage.iter().map(|u| (labels(&u.slot), ConstCounter::new(f(u)))),
                )
            };
        let gauge =
            |enc: &mut DescriptorEncoder, name: &str, help: &str, f: fn(&crate::Usage) -> u64| {
                family(
                    enc,
                    name,
                    help,
                    MetricType::Gauge,
                    usage.iter().map(|u| (labels(&u.slot), ConstGauge::new(f(u) as i64))),
                )
            };
        family(
            &mut enc,
            "tracker_slot_cpu_seconds",
            "CPU time of the slot's tasks, exited and live, by mode",
            MetricType::Counter,
            usage.iter().flat_map(|u| {
                [
                    (with_mode(&u.slot, "user"), ConstCounter::new(u.cpu_user_seconds)),
                    (with_mode(&u.slot, "system"), ConstCounter::new(u.cpu_system_seconds)),
                ]
            }),
        )?;
        gauge(
            &mut enc,
            "tracker_slot_memory_bytes",
            "Resident memory of the slot's processes",
            |u| u.memory_current_bytes,
        )?;
        gauge(
            &mut enc,
            "tracker_slot_memory_peak_bytes",
            "High-water mark of the slot's resident memory, kept in the kernel at every change",
            |u| u.memory_peak_bytes,
        )?;
        counter(
            &mut enc,
            "tracker_slot_io_read_bytes",
            "Bytes the slot made the block layer read",
            |u| u.read_bytes,
        )?;
        counter(
            &mut enc,
            "tracker_slot_io_write_bytes",
            "Bytes the slot made the block layer write",
            |u| u.write_bytes,
        )?;
        counter(
            &mut enc,
            "tracker_slot_io_rchar_bytes",
            "Bytes through the slot's read system calls, any filesystem (NFS, Lustre) and sockets",
            |u| u.rchar_bytes,
        )?;
        counter(
            &mut enc,
            "tracker_slot_io_wchar_bytes",
            "Bytes through the slot's write system calls, any filesystem and sockets",
            |u| u.wchar_bytes,
        )?;
        gauge(&mut enc, "tracker_slot_tasks", "Live tasks of the slot, threads included", |u| {
            u.tasks_live
        })?;
        counter(
            &mut enc,
            "tracker_slot_oom_kills",
            "Processes of the slot the OOM killer killed",
            |u| u.oom_kills,
        )?;
        // Every count of tracker-common's list, under its metric name.
        for (i, f) in SlotCounts::FIELDS.iter().enumerate() {
            family(
                &mut enc,
                &format!("tracker_slot_{}", f.metric),
                f.help,
                MetricType::Counter,
                usage.iter().map(|u| (labels(&u.slot), ConstCounter::new(u.counts.values()[i]))),
            )?;
        }

        single(
            &mut enc,
            "tracker_slots",
            "Slots the tracker holds",
            ConstGauge::new(owners.len() as i64),
        )?;
        let programs = status::programs(t.paths(), self.kernel_features);
        single(
            &mut enc,
            "tracker_programs_attached",
            "Kernel programs attached (or, for those attached only during kills, ready)",
            ConstGauge::new(programs.iter().filter(|p| p.ready).count() as i64),
        )?;
        single(
            &mut enc,
            "tracker_programs",
            "Kernel programs the tracker has",
            ConstGauge::new(programs.len() as i64),
        )?;
        single(
            &mut enc,
            "tracker_program_runs_skipped",
            "Runs of the tracker's programs the kernel skipped (recursion_misses)",
            ConstCounter::new(programs.iter().filter_map(|p| p.skipped).sum::<u64>()),
        )?;
        let global = t.global_counters();
        match &global {
            Ok(global) => {
                single(
                    &mut enc,
                    "tracker_tag_failures",
                    "New tasks of a slot that could not be tagged (should stay 0)",
                    ConstCounter::new(global.tag_failures),
                )?;
                single(
                    &mut enc,
                    "tracker_pid_max_refused",
                    "Writes of kernel.pid_max above what the tasks array can tag, refused",
                    ConstCounter::new(global.pid_max_refused),
                )?;
            }
            Err(e) => tracing::error!("metrics: global counters: {e}"),
        }
        let kernel_lost = global.map(|g| g.events_lost).unwrap_or_default();
        family(
            &mut enc,
            "tracker_events_lost",
            "Events lost: the kernel's buffer was full, or a Watch client read too slowly",
            MetricType::Counter,
            [
                (vec![("reason", "kernel_buffer_full".to_owned())], ConstCounter::new(kernel_lost)),
                (
                    vec![("reason", "client_too_slow".to_owned())],
                    ConstCounter::new(self.hub.client_lost()),
                ),
            ],
        )?;
        single(
            &mut enc,
            "tracker_events_published",
            "Events the daemon published to its Watch clients (its sequence number)",
            ConstCounter::new(self.hub.published()),
        )?;
        single(
            &mut enc,
            "tracker_watch_clients_stalled",
            "Watch clients that read nothing while their connection is full (they will lose events)",
            ConstGauge::new(i64::try_from(self.hub.stalled()).unwrap_or(i64::MAX)),
        )?;
        single(
            &mut enc,
            "tracker_event_stream_held",
            "1 while the daemon reads the kernel's event stream (Watch works)",
            ConstGauge::new(i64::from(self.hub.is_streaming())),
        )?;
        Ok(())
    }
}

/// Who may read a connection's scrapes.
#[derive(Clone)]
pub enum Gate {
    /// A Unix connection: root and the daemon's group, by the peer's credentials, as for
    /// the API; never a process of a slot (a job), whatever its uid.
    Peer { peer: Option<Arc<Peer>>, policy: Policy },
    /// TCP: the bearer token, as for the API's TCP listener.
    Token(Policy),
}

impl Gate {
    fn check(&self, req: &Request<hyper::body::Incoming>) -> Result<(), String> {
        match self {
            Self::Peer { peer: None, .. } => {
                Err("the caller's credentials could not be read".into())
            }
            Self::Peer { peer: Some(p), policy } => {
                if !policy.allows(p) {
                    return Err(format!(
                        "uid {} is neither root nor in group {}",
                        p.uid, policy.group_gid
                    ));
                }
                // Slot names and owners are private to the site: a job (even one in the
                // group, even root) reads none, its own slot's included.
                if p.in_slot {
                    return Err(format!("pid {} runs in a slot: jobs read no metrics", p.pid));
                }
                Ok(())
            }
            Self::Token(policy) => {
                let given = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if policy.token_matches(given) {
                    Ok(())
                } else {
                    Err("send `authorization: Bearer <the metrics token>`".into())
                }
            }
        }
    }
}

/// A scrape connection may live this long, whatever it does.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// Serve `GET /metrics` on every connection of `conns`, each behind `gate_of`'s gate.
pub async fn serve<S>(
    mut conns: ReceiverStream<std::io::Result<Guarded<S>>>,
    metrics: Arc<Metrics>,
    gate_of: impl Fn(&S) -> Gate + Send + 'static,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(Ok(stream)) = conns.next().await {
        let metrics = metrics.clone();
        let gate = gate_of(stream.get_ref());
        tokio::spawn(async move {
            let svc = service_fn(move |req| respond(req, metrics.clone(), gate.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(FIRST_BYTES)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!("metrics: connection: {e}"),
                Err(_) => {
                    tracing::debug!("metrics: connection closed after {CONNECTION_LIFETIME:?}")
                }
                Ok(Ok(())) => {}
            }
        });
    }
}

/// How long a scrape may take to send its request headers.
const FIRST_BYTES: std::time::Duration = std::time::Duration::from_secs(10);

async fn respond(
    req: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
    gate: Gate,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if let Err(why) = gate.check(&req) {
        let code = match gate {
            Gate::Token(_) => StatusCode::UNAUTHORIZED,
            Gate::Peer { .. } => StatusCode::FORBIDDEN,
        };
        return reply(code, "text/plain", format!("{why}\n"));
    }
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "only GET /metrics is served\n".into());
    }
    // The scrape reads the kernel's maps and runs a task iterator: off the async threads.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        _ => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n".into()),
    }
}
