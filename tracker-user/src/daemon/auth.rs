//! Who is calling, and whether they may: every call is checked, on every service (health and
//! reflection included).
//!
//! On the Unix socket the kernel says who connected (`SO_PEERCRED`: uid, gid, pid;
//! `SO_PEERGROUPS`: supplementary groups), read once at accept: root and members of the
//! configured group may make every call, anyone else gets PERMISSION_DENIED; and so does a
//! process that runs in a slot, whatever its uid: a job (a root job included) may not use the
//! daemon to kill, release or change other slots. The socket's mode
//! (0660, root and the group) already keeps others from connecting; this check holds even for
//! a connection made by a process whose file-system identity differs from its effective one.
//! Over TCP (off by default) there are no peer credentials: a call must carry the configured
//! bearer token, or it is UNAUTHENTICATED.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
};
use tonic::{Request, Status, transport::server::Connected};

/// The credentials of the process that connected to the Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// It is a task of a slot (a job), by the kernel's tag at accept.
    pub in_slot: bool,
}

/// Who a call comes from, as the handlers see it (a request extension set by `authorize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The peer's uid; 0 for a TCP caller with the token.
    pub uid: u32,
}

/// A Unix connection with the credentials of its peer, read once at accept.
pub struct PeerStream {
    inner: UnixStream,
    peer: Option<Arc<Peer>>,
}

impl PeerStream {
    /// `in_slot` says whether a pid is a task of a slot (true when that cannot be told).
    pub fn new(inner: UnixStream, in_slot: &dyn Fn(u32) -> bool) -> Self {
        let peer = match peer_of(&inner) {
            Ok(mut p) => {
                p.in_slot = in_slot(p.pid);
                Some(Arc::new(p))
            }
            Err(e) => {
                // Without credentials every call on this connection is denied.
                tracing::warn!("reading a caller's credentials: {e}");
                None
            }
        };
        Self { inner, peer }
    }

    pub fn peer(&self) -> Option<Arc<Peer>> {
        self.peer.clone()
    }
}

fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let fd = stream.as_fd().as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt fills `cred`, whose size is passed in `len`.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt fills at most `len` bytes of `groups`, and says how many it
        // needs when that is too few (ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() || n > 65_536 {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    Ok(Peer { pid: cred.pid as u32, uid: cred.uid, gid: cred.gid, groups, in_slot: false })
}

impl Connected for PeerStream {
    type ConnectInfo = Option<Arc<Peer>>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
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

/// Who may call.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Besides root, members of this group (primary or supplementary).
    pub group_gid: u32,
    /// For TCP callers: the bearer token they must send.
    pub tcp_token: Option<Arc<str>>,
}

impl Policy {
    /// Whether `peer` may make calls.
    pub fn allows(&self, peer: &Peer) -> bool {
        peer.uid == 0 || peer.gid == self.group_gid || peer.groups.contains(&self.group_gid)
    }

    /// The interceptor every service runs behind: admit the call and say who made it, or
    /// refuse it.
    pub fn authorize(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = if let Some(peer) = req.extensions().get::<Option<Arc<Peer>>>() {
            let Some(peer) = peer else {
                return Err(Status::permission_denied(
                    "the caller's credentials could not be read",
                ));
            };
            if peer.in_slot {
                return Err(Status::permission_denied(format!(
                    "pid {} runs in a slot: jobs may not use the tracker's API",
                    peer.pid
                )));
            }
            if !self.allows(peer) {
                return Err(Status::permission_denied(format!(
                    "uid {} (pid {}) is neither root nor in group {}: ask an administrator to \
                     add it to the group (the daemon's `group` setting)",
                    peer.uid, peer.pid, self.group_gid
                )));
            }
            Caller { uid: peer.uid }
        } else if self.tcp_token.is_some() && req.remote_addr().is_some() {
            self.check_token(&req)?;
            Caller { uid: 0 }
        } else {
            return Err(Status::permission_denied("the caller cannot be identified"));
        };
        req.extensions_mut().insert(caller);
        Ok(req)
    }

    fn check_token(&self, req: &Request<()>) -> Result<(), Status> {
        let given =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if self.token_matches(given) {
            Ok(())
        } else {
            Err(Status::unauthenticated("send `authorization: Bearer <the daemon's token>`"))
        }
    }

    /// Whether an `authorization` header's value is `Bearer <the token>` (never true
    /// without a token).
    pub fn token_matches(&self, authorization: &str) -> bool {
        let expected = self.tcp_token.as_deref().unwrap_or_default();
        let given = authorization.strip_prefix("Bearer ").unwrap_or_default();
        constant_time_eq(given.as_bytes(), expected.as_bytes()) && !expected.is_empty()
    }
}

/// Compare without an early exit, so that the time taken says nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { group_gid: 4242, tcp_token: Some("0123456789abcdef".into()) }
    }

    fn request_from(peer: Option<Peer>) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(peer.map(Arc::new));
        req
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { pid: 1234, uid, gid, groups: groups.to_vec(), in_slot: false }
    }

    #[test]
    fn root_and_the_group_may_call() {
        for p in [peer(0, 0, &[]), peer(1000, 4242, &[]), peer(1000, 1000, &[27, 4242])] {
            let uid = p.uid;
            let req = policy().authorize(request_from(Some(p))).unwrap();
            assert_eq!(req.extensions().get::<Caller>(), Some(&Caller { uid }));
        }
    }

    #[test]
    fn a_job_is_denied_whatever_its_uid() {
        let job = Peer { in_slot: true, ..peer(0, 0, &[]) };
        let e = policy().authorize(request_from(Some(job))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("runs in a slot"), "{e:?}");
    }

    #[test]
    fn anyone_else_is_denied() {
        for req in
            [request_from(Some(peer(1000, 1000, &[27]))), request_from(None), Request::new(())]
        {
            let e = policy().authorize(req).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        }
    }

    #[test]
    fn peer_credentials_are_read_from_the_kernel() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let _guard = rt.enter();
        let stream = PeerStream::new(UnixStream::from_std(a).unwrap(), &|_| false);
        let peer = stream.connect_info().unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((peer.pid, peer.uid, peer.gid), (std::process::id(), uid, gid));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
