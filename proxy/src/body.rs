//! The response body streamed to the client, holding its endpoint's in-flight count and its
//! connection until done.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::endpoint::InFlight;
use crate::upstream_pool::UpstreamConn;

/// An upstream response body that releases the endpoint's in-flight slot when it ends or is
/// dropped, and gives its connection back to the pool when it was read to its end.
#[derive(Debug)]
pub struct TrackedBody {
    inner: Incoming,
    in_flight: Option<InFlight>,
    /// `None` once released.
    conn: Option<UpstreamConn>,
}

impl TrackedBody {
    pub(crate) fn new(inner: Incoming, in_flight: InFlight, conn: UpstreamConn) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
            conn: Some(conn),
        }
    }

    /// Ends the request's hold on the endpoint; the connection is pooled when `complete`
    /// (anything less leaves it mid-response, and it closes).
    fn release(&mut self, complete: bool) {
        let conn = self.conn.take();
        if let Some(in_flight) = self.in_flight.take() {
            if let (true, Some(conn)) = (complete, conn) {
                in_flight.checkin(conn);
            }
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // The server stops polling once the length says the body is done, so an end seen
        // only through `is_end_stream` is as complete as one seen through `poll_frame`.
        let complete = self.inner.is_end_stream();
        self.release(complete);
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => self.release(true),
            Poll::Ready(Some(Err(_))) => self.release(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
