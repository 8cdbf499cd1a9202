//! What every listener of the daemon (gRPC and metrics, Unix and TCP) does against a caller who
//! holds connections open or runs the daemon out of descriptors:
//! - at most `max_connections` live connections per listener: beyond that nothing is accepted
//!   and new connections wait in the kernel's backlog, which costs the daemon no descriptor, so
//!   one listener's crowd never starves another (the Unix API keeps its share);
//! - a connection that sends nothing within `first_bytes` is closed (an HTTP client speaks
//!   first; one that does not is holding a slot);
//! - an accept that fails (EMFILE, ENFILE, ENOBUFS, ...) is retried after a pause that grows
//!   to a second, and logged at most once per `LOG_EVERY` with how many more there were: never
//!   a spinning loop or a flood of log lines.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Descriptors kept back for everything that is not a connection (maps, files, threads).
pub const RESERVED_FDS: u64 = 256;
const LOG_EVERY: Duration = Duration::from_secs(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub max_connections: usize,
    pub first_bytes: Duration,
}

/// A listener the accept loop can poll.
pub trait Accept: Send + 'static {
    type Stream: Send + 'static;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Stream>>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        TcpListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// Accept on `listener` until `stopping`, under `guard`; `wrap` turns each accepted stream
/// into what the server serves (a Unix one learns its peer's credentials).
pub fn incoming<L, S>(
    name: &'static str,
    mut listener: L,
    guard: Guard,
    wrap: impl Fn(L::Stream) -> S + Send + 'static,
    mut stopping: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Guarded<S>>>
where
    L: Accept,
    S: Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(guard.max_connections.max(1)));
    tokio::spawn(async move {
        let mut log = RateLimited::default();
        let mut pause = Duration::from_millis(10);
        loop {
            // At the cap, wait here: new connections stay in the kernel's backlog.
            let permit = tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let accepted = tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                a = std::future::poll_fn(|cx| listener.poll_accept(cx)) => a,
            };
            match accepted {
                Ok(stream) => {
                    pause = Duration::from_millis(10);
                    let conn = Guarded::new(wrap(stream), permit, guard.first_bytes);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    drop(permit);
                    let resources = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    let _ = log.warn(Instant::now(), name, &e, resources);
                    // A lack of descriptors lasts until connections close: wait for that,
                    // longer each time; anything else is one connection's problem.
                    let wait = if resources { pause } else { Duration::from_millis(1) };
                    pause = (pause * 2).min(MAX_PAUSE);
                    tokio::select! {
                        _ = stopping.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// One warning per `LOG_EVERY`, saying how many it stands for.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// Log `e`, unless a line went out less than `LOG_EVERY` before `now`; says whether it
    /// logged.
    fn warn(&mut self, now: Instant, name: &str, e: &io::Error, resources: bool) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return false;
        }
        let more = std::mem::take(&mut self.suppressed);
        let hint = if resources { ": backing off (raise LimitNOFILE?)" } else { "" };
        tracing::warn!("{name}: accept: {e} ({more} more in the last {LOG_EVERY:?}){hint}");
        self.last = Some(now);
        true
    }
}

/// A connection holding its place under the listener's cap, closed if it says nothing in
/// time.
pub struct Guarded<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    /// Until the first bytes arrive.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, slot: OwnedSemaphorePermit, first_bytes: Duration) -> Self {
        Self { inner, _slot: slot, deadline: Some(Box::pin(tokio::time::sleep(first_bytes))) }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raise the soft descriptor limit to the hard one, and share what is left after
/// `RESERVED_FDS` between `listeners`: each gets at most `max_connections`, and never so many
/// that together they could run the daemon out of descriptors.
pub fn per_listener_cap(max_connections: usize, listeners: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!("raising the descriptor limit: {e}");
        }
        lim = getrlimit(Resource::Nofile);
    }
    let soft = lim.current.unwrap_or(u64::MAX);
    share(soft, max_connections, listeners)
}

fn share(soft: u64, max_connections: usize, listeners: usize) -> usize {
    let spare = soft.saturating_sub(RESERVED_FDS) / listeners.max(1) as u64;
    (max_connections as u64).min(spare).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_per_period() {
        let mut log = RateLimited::default();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = Instant::now();
        let logged = (0..10_000).filter(|_| log.warn(t0, "test", &e, true)).count();
        assert_eq!(logged, 1);
        assert_eq!(log.suppressed, 9_999);
        assert!(log.warn(t0 + LOG_EVERY, "test", &e, true), "the next period logs again");
        assert_eq!(log.suppressed, 0);
    }

    #[test]
    fn listeners_share_what_the_limit_leaves() {
        assert_eq!(share(1024, 512, 4), 192);
        assert_eq!(share(1 << 20, 512, 4), 512);
        assert_eq!(share(100, 512, 2), 1);
    }

    #[test]
    fn a_silent_connection_is_closed_and_the_cap_holds() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (_stop_tx, stop) = watch::channel(false);
            let guard = Guard { max_connections: 1, first_bytes: Duration::from_millis(50) };
            let mut conns = incoming("test", l, guard, |s| s, stop);
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            use tokio_stream::StreamExt as _;
            let _silent = TcpStream::connect(addr).await.unwrap();
            let mut first = conns.next().await.unwrap().unwrap();
            // A second client waits in the backlog while the first holds the only place; what
            // it sends meanwhile is there when it is accepted.
            let mut second_client = TcpStream::connect(addr).await.unwrap();
            second_client.write_all(b"x").await.unwrap();
            let mut buf = [0u8; 1];
            let e = first.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            drop(first);
            let mut second = conns.next().await.unwrap().unwrap();
            assert_eq!(second.read(&mut buf).await.unwrap(), 1);
        });
    }
}
