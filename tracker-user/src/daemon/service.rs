//! The `tracker.v1.Tracker` service: each method checks its request, calls the library (on a
//! blocking thread: the library makes system calls and may wait, as a kill does), and converts
//! the answer. A call that fails changes nothing; its status code says why (see the .proto).
use std::{sync::Arc, time::Duration};

use tokio::sync::{broadcast::error::RecvError, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    auth::Caller,
    hub::Hub,
    metrics::Metrics,
    proto::{self, tracker_server},
};
use crate::{
    error::Error,
    events::EventKind,
    limits::Limits,
    tracker::{KillOptions, SlotSpec, Tracker, check_signal, validate_slot_name},
};

/// Events a Watch client's connection may hold before the client counts as slow.
const CLIENT_QUEUE: usize = 256;

#[derive(Clone)]
pub struct Service {
    pub tracker: Arc<Tracker>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub kill_timeout: Duration,
    /// Becomes true when the daemon stops: Watch streams end then.
    pub stopping: watch::Receiver<bool>,
}

/// The library's error as the gRPC status its kind calls for.
pub fn status_of(e: Error) -> Status {
    use tonic::Code;
    let code = match &e {
        Error::UnknownSlot(_) | Error::NoSuchProcess(_) => Code::NotFound,
        Error::SlotExists(_) => Code::AlreadyExists,
        Error::InvalidSlotName { .. }
        | Error::InvalidLimit(_)
        | Error::InvalidSignal(_)
        | Error::UnknownUser(_)
        | Error::UnknownGroup(_)
        | Error::BadCgroup { .. }
        | Error::BoundLimits(_) => Code::InvalidArgument,
        Error::CgroupTaken { .. } => Code::AlreadyExists,
        Error::SlotBusy { .. }
        | Error::AlreadyInSlot { .. }
        | Error::RefusedAdopt { .. }
        | Error::NotTagged { .. }
        | Error::LimitUnavailable { .. } => Code::FailedPrecondition,
        Error::SlotsFull(_) => Code::ResourceExhausted,
        Error::EventsBusy => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn caller<T>(req: &Request<T>) -> Caller {
    // The interceptor admits no call without one.
    req.extensions().get::<Caller>().copied().unwrap_or(Caller { uid: u32::MAX })
}

fn slot_name(name: &str) -> Result<(), Status> {
    validate_slot_name(name).map_err(status_of)
}

impl Service {
    /// Run `f` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tracker) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let t = self.tracker.clone();
        tokio::task::spawn_blocking(move || f(&t))
            .await
            .map_err(|e| Status::internal(format!("the call's thread failed: {e}")))?
            .map_err(status_of)
    }
}

type WatchStream = ReceiverStream<Result<proto::WatchResponse, Status>>;

#[tonic::async_trait]
impl tracker_server::Tracker for Service {
    async fn create_slot(
        &self,
        req: Request<proto::CreateSlotRequest>,
    ) -> Result<Response<proto::CreateSlotResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        slot_name(&r.name)?;
        let limits = Limits::try_from(r.limits.unwrap_or_default()).map_err(status_of)?;
        let spec = SlotSpec {
            name: r.name,
            owner_uid: r.owner_uid.unwrap_or(who.uid),
            limits,
            cgroup: (!r.cgroup.is_empty()).then(|| r.cgroup.into()),
        };
        let (rec, warnings) = self.blocking(move |t| t.create_slot(&spec)).await?;
        tracing::info!(slot = rec.name, owner = rec.owner_uid, caller = who.uid, "slot created");
        Ok(Response::new(proto::CreateSlotResponse { slot: Some((&rec).into()), warnings }))
    }

    async fn adopt_process(
        &self,
        req: Request<proto::AdoptProcessRequest>,
    ) -> Result<Response<proto::AdoptProcessResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        slot_name(&r.slot)?;
        if r.pid == 0 {
            return Err(Status::invalid_argument("pid 0 is not a process"));
        }
        let slot = r.slot.clone();
        let a = self.blocking(move |t| t.adopt(&slot, r.pid)).await?;
        tracing::info!(slot = r.slot, pid = r.pid, caller = who.uid, "adopted");
        Ok(Response::new(proto::AdoptProcessResponse {
            processes: a.processes as u64,
            tasks: a.tasks as u64,
        }))
    }

    async fn get_usage(
        &self,
        req: Request<proto::GetUsageRequest>,
    ) -> Result<Response<proto::GetUsageResponse>, Status> {
        let slot = req.into_inner().slot;
        slot_name(&slot)?;
        let u = self.blocking(move |t| t.usage(&slot)).await?;
        Ok(Response::new(proto::GetUsageResponse { usage: Some((&u).into()) }))
    }

    async fn list_processes(
        &self,
        req: Request<proto::ListProcessesRequest>,
    ) -> Result<Response<proto::ListProcessesResponse>, Status> {
        let r = req.into_inner();
        slot_name(&r.slot)?;
        let procs = self.blocking(move |t| t.processes(&r.slot, r.threads)).await?;
        Ok(Response::new(proto::ListProcessesResponse {
            processes: procs.into_iter().map(Into::into).collect(),
        }))
    }

    async fn signal_slot(
        &self,
        req: Request<proto::SignalSlotRequest>,
    ) -> Result<Response<proto::SignalSlotResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        slot_name(&r.slot)?;
        check_signal(r.signal).map_err(status_of)?;
        let slot = r.slot.clone();
        let n = self.blocking(move |t| t.signal(&slot, r.signal)).await?;
        tracing::info!(
            slot = r.slot,
            signal = r.signal,
            processes = n,
            caller = who.uid,
            "signalled"
        );
        Ok(Response::new(proto::SignalSlotResponse { processes: n }))
    }

    async fn suspend_slot(
        &self,
        req: Request<proto::SuspendSlotRequest>,
    ) -> Result<Response<proto::SuspendSlotResponse>, Status> {
        let slot = req.into_inner().slot;
        slot_name(&slot)?;
        let r = self.blocking(move |t| t.suspend(&slot)).await?;
        Ok(Response::new(proto::SuspendSlotResponse {
            cgroup_frozen: r.cgroup,
            processes_stopped: r.processes,
        }))
    }

    async fn resume_slot(
        &self,
        req: Request<proto::ResumeSlotRequest>,
    ) -> Result<Response<proto::ResumeSlotResponse>, Status> {
        let slot = req.into_inner().slot;
        slot_name(&slot)?;
        let r = self.blocking(move |t| t.resume(&slot)).await?;
        Ok(Response::new(proto::ResumeSlotResponse {
            cgroup_thawed: r.cgroup,
            processes_continued: r.processes,
        }))
    }

    async fn kill_slot(
        &self,
        req: Request<proto::KillSlotRequest>,
    ) -> Result<Response<proto::KillSlotResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        slot_name(&r.slot)?;
        let timeout = match r.timeout_seconds {
            None => self.kill_timeout,
            Some(s) => Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| *d <= Duration::from_secs(24 * 3600))
                .ok_or_else(|| {
                    Status::invalid_argument(format!("timeout_seconds {s}: use 0 to 86400"))
                })?,
        };
        let slot = r.slot.clone();
        let report = self.blocking(move |t| t.kill(&slot, &KillOptions { timeout })).await?;
        self.metrics.observe_kill(&report);
        self.hub.publish(EventKind::KillDone, &r.slot);
        tracing::info!(
            slot = r.slot,
            killed = report.killed,
            survivors = report.survivors.len(),
            ms = report.elapsed_ms,
            caller = who.uid,
            "killed"
        );
        Ok(Response::new(proto::KillSlotResponse { report: Some((&report).into()) }))
    }

    async fn release_slot(
        &self,
        req: Request<proto::ReleaseSlotRequest>,
    ) -> Result<Response<proto::ReleaseSlotResponse>, Status> {
        let who = caller(&req);
        let slot = req.into_inner().slot;
        slot_name(&slot)?;
        let name = slot.clone();
        self.blocking(move |t| t.release(&name)).await?;
        tracing::info!(slot, caller = who.uid, "released");
        Ok(Response::new(proto::ReleaseSlotResponse {}))
    }

    async fn set_limits(
        &self,
        req: Request<proto::SetLimitsRequest>,
    ) -> Result<Response<proto::SetLimitsResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        slot_name(&r.slot)?;
        let change = Limits::try_from(r.limits.unwrap_or_default()).map_err(status_of)?;
        let slot = r.slot.clone();
        let now = self.blocking(move |t| t.set_limits(&slot, &change)).await?;
        tracing::info!(slot = r.slot, caller = who.uid, "limits changed");
        Ok(Response::new(proto::SetLimitsResponse { limits: Some((&now).into()) }))
    }

    async fn list_slots(
        &self,
        _req: Request<proto::ListSlotsRequest>,
    ) -> Result<Response<proto::ListSlotsResponse>, Status> {
        let slots = self.blocking(|t| Ok(t.slots()?.iter().map(Into::into).collect())).await?;
        Ok(Response::new(proto::ListSlotsResponse { slots }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter = req.into_inner().slot;
        if !filter.is_empty() {
            slot_name(&filter)?;
        }
        let mut sub = self.hub.subscribe().ok_or_else(|| status_of(Error::EventsBusy))?;
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let hub = self.hub.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stopping.wait_for(|s| *s) => break,
                    () = tx.closed() => break,
                    next = sub.recv() => next,
                };
                let event = match next {
                    Ok(ev)
                        if filter.is_empty() || ev.slot == filter || ev.kind == EventKind::Lost =>
                    {
                        proto::Event::from(&*ev)
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        hub.count_client_lost(n);
                        proto::Event::client_lost(n)
                    }
                    Err(RecvError::Closed) => break,
                };
                let msg = Ok(proto::WatchResponse { event: Some(event) });
                let msg = match tx.try_send(msg) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                    Err(mpsc::error::TrySendError::Full(msg)) => msg,
                };
                // The client's whole path (this queue, HTTP/2 windows, socket) is full.
                let _stalled = hub.stall();
                let sent = tokio::select! {
                    _ = stopping.wait_for(|s| *s) => break,
                    sent = tx.send(msg) => sent,
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
