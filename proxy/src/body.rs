//! The response body streamed to the client, holding its endpoint's in-flight count and its
//! connection until done.

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
