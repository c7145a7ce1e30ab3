//! Bodies of the HTTP path.
//!
//! A request body is read once, from the client, but may be sent several
//! times: to a retry's endpoint and to mirrors. [`Replay`] keeps a copy of
//! what has been read, up to a cap (Envoy buffers a request for retries up
//! to its buffer limit and gives up retrying beyond it; linkerd2-proxy's
//! `linkerd/http/retry` replays bodies up to 64 KiB). Each attempt reads
//! through a [`ReplayBody`]: the recorded frames first, then on from the
//! client, recording as it goes; a body never waits for the whole request
//! (a gRPC stream may only end after the response has started). Only the
//! latest attempt may read: an older one, still held by a connection that
//! was given up, gets an error instead of stealing frames.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the path sends: requests upstream, responses downstream.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A request body kept for replay up to this many bytes.
pub const REPLAY_CAP: usize = 64 * 1024;

#[derive(Debug)]
struct Tee {
    incoming: Option<Incoming>,
    data: Vec<Bytes>,
    /// Data frames read from the client so far, and how many of the first
    /// were dropped when the copy outgrew the cap.
    count: usize,
    base: usize,
    bytes: usize,
    /// Every data byte read from the client (for `istio_request_bytes`).
    total: u64,
    /// The gRPC messages in them, for a gRPC request.
    messages: Option<GrpcMessages>,
    trailers: Option<HeaderMap>,
    ended: bool,
    failed: bool,
    overflow: bool,
    /// The attempt allowed to read.
    epoch: u64,
}

#[derive(Debug)]
struct Shared {
    tee: Mutex<Tee>,
    done: Notify,
    cap: usize,
    hint: SizeHint,
    empty: bool,
}

/// One request's body, readable by successive attempts.
#[derive(Debug, Clone)]
pub struct Replay(Arc<Shared>);

impl Replay {
    /// `grpc`: count the body's gRPC messages.
    pub fn new(incoming: Incoming, cap: usize, grpc: bool) -> Replay {
        let hint = incoming.size_hint();
        let empty = incoming.is_end_stream();
        let tee = Tee {
            incoming: Some(incoming),
            data: Vec::new(),
            count: 0,
            base: 0,
            bytes: 0,
            total: 0,
            messages: grpc.then(GrpcMessages::default),
            trailers: None,
            ended: empty,
            failed: false,
            overflow: false,
            epoch: 0,
        };
        Replay(Arc::new(Shared { tee: Mutex::new(tee), done: Notify::new(), cap, hint, empty }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tee> {
        self.0.tee.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body of the next attempt (earlier attempts' bodies stop reading).
    pub fn attempt(&self) -> ReplayBody {
        let mut t = self.lock();
        t.epoch += 1;
        ReplayBody { shared: self.0.clone(), epoch: t.epoch, pos: 0, trailers_sent: false }
    }

    /// The body bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().total
    }

    /// The gRPC messages read from the client so far (0 when not gRPC).
    pub fn messages(&self) -> u64 {
        self.lock().messages.as_ref().map_or(0, |m| m.count)
    }

    /// The client's body failed (a malformed chunk, a reset): its fault, not
    /// the upstream's.
    pub fn client_failed(&self) -> bool {
        self.lock().failed
    }

    /// Whether another attempt could send the whole body again.
    pub fn replayable(&self) -> bool {
        let t = self.lock();
        !t.overflow && !t.failed
    }

    /// The whole body once the client has sent it, if it fit the cap (for
    /// mirrors); None when it did not, or the client failed.
    pub async fn complete(&self) -> Option<(Vec<Bytes>, Option<HeaderMap>)> {
        loop {
            let notified = self.0.done.notified();
            {
                let t = self.lock();
                if t.overflow || t.failed {
                    return None;
                }
                if t.ended {
                    return Some((t.data.clone(), t.trailers.clone()));
                }
            }
            notified.await;
        }
    }
}

/// One attempt's view of a [`Replay`].
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Shared>,
    epoch: u64,
    pos: usize,
    trailers_sent: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let sh = this.shared.clone();
        let mut t = sh.tee.lock().unwrap_or_else(|e| e.into_inner());
        if t.epoch != this.epoch {
            return Poll::Ready(Some(Err("request body superseded by a retry".into())));
        }
        if this.pos < t.count {
            if this.pos < t.base {
                return Poll::Ready(Some(Err("request body larger than the replay buffer".into())));
            }
            let d = t.data[this.pos - t.base].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if t.ended {
            if let (Some(tr), false) = (&t.trailers, this.trailers_sent) {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(tr.clone()))));
            }
            return Poll::Ready(None);
        }
        if t.failed {
            return Poll::Ready(Some(Err("client request body failed".into())));
        }
        let Some(incoming) = t.incoming.as_mut() else { return Poll::Ready(None) };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                t.ended = true;
                t.incoming = None;
                drop(t);
                sh.done.notify_waiters();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                t.failed = true;
                drop(t);
                sh.done.notify_waiters();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(d) => {
                        t.count += 1;
                        t.total += d.len() as u64;
                        if let Some(m) = t.messages.as_mut() {
                            m.feed(&d);
                        }
                        this.pos = t.count;
                        if !t.overflow {
                            if t.bytes + d.len() > sh.cap {
                                t.overflow = true;
                                t.base = t.count;
                                t.data = Vec::new();
                            } else {
                                t.bytes += d.len();
                                t.data.push(d.clone());
                            }
                        } else {
                            t.base = t.count;
                        }
                        // A body of known length is over with its last byte:
                        // hyper stops polling it then, so say so now.
                        if t.incoming.as_ref().is_some_and(Body::is_end_stream) {
                            t.ended = true;
                            t.incoming = None;
                            sh.done.notify_waiters();
                        }
                        Frame::data(d)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(tr) => {
                            t.trailers = Some(tr.clone());
                            t.ended = true;
                            t.incoming = None;
                            this.trailers_sent = true;
                            drop(t);
                            sh.done.notify_waiters();
                            Frame::trailers(tr)
                        }
                        // Neither data nor trailers: nothing to forward.
                        Err(_) => {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared.empty
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.hint
    }
}

/// A local reply's body.
pub fn full(b: impl Into<Bytes>) -> HttpBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> HttpBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A recorded body sent again (to a mirror).
pub fn recorded(data: Vec<Bytes>, trailers: Option<HeaderMap>) -> HttpBody {
    use http_body_util::BodyExt;
    Recorded { data: data.into(), trailers }.boxed_unsync()
}

struct Recorded {
    data: std::collections::VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }
}

/// Counts the messages of a gRPC body as its bytes go by: each message is a
/// 5-byte prefix (a compressed flag and a 4-byte big-endian length) and
/// that many bytes (gRPC over HTTP/2, "Length-Prefixed-Message"; Envoy's
/// `grpc_stats` filter counts the same for Istio's
/// `istio_request_messages_total` / `istio_response_messages_total`). A
/// message counts once its prefix is complete; data frames may split
/// prefixes and messages anywhere.
#[derive(Debug, Default, Clone)]
pub struct GrpcMessages {
    pub count: u64,
    /// Bytes of the current message still to come.
    left: u64,
    prefix: [u8; 5],
    have: usize,
}

impl GrpcMessages {
    pub fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.left > 0 {
                let n = (self.left.min(b.len() as u64)) as usize;
                self.left -= n as u64;
                b = &b[n..];
                continue;
            }
            let n = (5 - self.have).min(b.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&b[..n]);
            self.have += n;
            b = &b[n..];
            if self.have == 5 {
                self.count += 1;
                self.have = 0;
                let p = self.prefix;
                self.left = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
            }
        }
    }
}
