//! The client's request body on its way upstream: cut off when it stalls, cut at the
//! route's size limit, or empty on a replayed attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;

/// Body sent upstream: the client's stream (cut at the route's size limit), or nothing on
/// a replayed attempt.
pub type UpstreamBody = Either<Limited<IdleBody>, Empty<Bytes>>;

/// The client's request body, failing with [`BodyStalled`] when no data comes for `timeout`.
#[derive(Debug)]
pub struct IdleBody {
    inner: Incoming,
    timeout: std::time::Duration,
    /// Created on the first wait only, so bodiless requests never touch the timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A request body that sent nothing for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled")]
pub struct BodyStalled;

impl IdleBody {
    pub(crate) fn new(inner: Incoming, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(s) = this.sleep.as_mut() {
                    s.as_mut().reset(tokio::time::Instant::now() + this.timeout);
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
