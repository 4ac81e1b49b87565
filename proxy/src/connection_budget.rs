//! Per-connection budgets: how many requests a connection may carry, and how many it may
//! cancel before their response is ready.
//!
//! The cancellation budget is the defence against the HTTP/2 "Rapid Reset" variant
//! (CVE-2023-44487) that the h2 crate's pending-accept counter cannot see, where each
//! stream is left open long enough to be accepted and forwarded upstream and only then
//! reset. Every such stream costs the proxy an upstream request and the attacker nothing,
//! so a connection whose cancellations pass the budget while outnumbering its completed
//! requests is told to go away. On HTTP/1 a cancelled request means a closed connection,
//! so that budget only ever trips on HTTP/2.
//!
//! The request budget closes a connection gracefully after N requests (HTTP/1
//! `Connection: close`, HTTP/2 GOAWAY), so long-lived client connections are spread
//! again over the replicas behind the load balancer and no connection lives for ever.
//!
//! Both cost an uncontended atomic add or two per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use hyper::service::Service;
use tokio::sync::Notify;

use crate::request_framing::FramingState;

/// Why a connection's budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// It cancelled too many requests: cut it.
    Cancelled,
    /// It carried its share of requests: close it gracefully.
    Requests,
}

/// Counts one connection's completed and cancelled requests.
#[derive(Debug)]
pub struct ConnectionBudget {
    /// Cancellations allowed before the ratio test applies; 0 disables that budget.
    max_cancelled: u32,
    /// Requests per connection; 0 means no limit.
    max_requests: u64,
    started: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU32,
    /// Every cancellation, counted even with the cancellation budget off (for idleness).
    cancelled_total: AtomicU32,
    /// Set once, by the first budget to run out.
    spent: AtomicBool,
    cancelled_out: AtomicBool,
    notify: Notify,
}

impl ConnectionBudget {
    /// A budget of `max_cancelled` cancelled and `max_requests` completed requests per
    /// connection (0: unlimited).
    pub fn new(max_cancelled: u32, max_requests: u64) -> Arc<Self> {
        Arc::new(Self {
            max_cancelled,
            max_requests,
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU32::new(0),
            cancelled_total: AtomicU32::new(0),
            spent: AtomicBool::new(false),
            cancelled_out: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Wraps a connection's service so each of its requests is counted here, and a request
    /// whose head `framing` refused carries a [`crate::request_framing::RefusedHead`] extension.
    pub fn wrap<S>(self: &Arc<Self>, inner: S, framing: Arc<FramingState>) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.clone(),
            framing,
        }
    }

    /// Resolves once the connection has spent a budget (never, with both unlimited).
    pub async fn spent(&self) -> Spent {
        if self.max_cancelled == 0 && self.max_requests == 0 {
            return std::future::pending().await;
        }
        // A trip before this call left a permit behind, so it is not missed.
        self.notify.notified().await;
        if self.cancelled_out.load(Ordering::Relaxed) {
            Spent::Cancelled
        } else {
            Spent::Requests
        }
    }

    /// Requests started and requests finished (answered or cancelled) so far. Answers still
    /// streaming their body count as finished: closing gracefully lets them end.
    pub fn progress(&self) -> (u64, u64) {
        let started = self.started.load(Ordering::Relaxed);
        let finished = self.completed.load(Ordering::Relaxed) + u64::from(self.cancelled_total.load(Ordering::Relaxed));
        (started, finished)
    }

    fn trip(&self) {
        if !self.spent.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Counts a request in; returns its 1-based index on the connection.
    fn start(&self) -> u64 {
        // Counted when the request is taken, so the close is decided before the next one
        // is read: the last request's answer carries `Connection: close`.
        let started = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        if started == self.max_requests {
            self.trip();
        }
        started
    }

    fn complete(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn cancel(&self) {
        self.cancelled_total.fetch_add(1, Ordering::Relaxed);
        if self.max_cancelled == 0 {
            return;
        }
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        // A client that mostly finishes its requests (a browser leaving pages, a gRPC
        // client with deadlines) may cancel many; one that mostly cancels may not.
        if cancelled >= self.max_cancelled && u64::from(cancelled) > self.completed.load(Ordering::Relaxed) {
            self.cancelled_out.store(true, Ordering::Relaxed);
            self.trip();
        }
    }
}

/// A service whose requests are counted against a [`ConnectionBudget`].
#[derive(Debug, Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: Arc<ConnectionBudget>,
    framing: Arc<FramingState>,
}

impl<S, B> Service<Request<B>> for Budgeted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let n = self.budget.start();
        if let Some(why) = self.framing.refused(n) {
            req.extensions_mut().insert(why);
        }
        Counted {
            inner: self.inner.call(req),
            budget: Some(self.budget.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future; dropped before it resolves, it counts as cancelled.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        // Taken when the future resolves, so drop knows it was not cancelled.
        budget: Option<Arc<ConnectionBudget>>,
    }

    impl<F> PinnedDrop for Counted<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(budget) = this.project().budget.take() {
                budget.cancel();
            }
        }
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(budget) = this.budget.take() {
            budget.complete();
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    #[derive(Clone)]
    struct Never;

    impl Service<Request<()>> for Never {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Pending<Result<(), Infallible>>;
        fn call(&self, _: Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    #[derive(Clone)]
    struct Ready;

    impl Service<Request<()>> for Ready {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Ready<Result<(), Infallible>>;
        fn call(&self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    fn req() -> Request<()> {
        Request::new(())
    }

    async fn spent(b: &ConnectionBudget) -> Option<Spent> {
        tokio::time::timeout(Duration::from_millis(20), b.spent()).await.ok()
    }

    #[tokio::test]
    async fn trips_when_cancellations_reach_the_limit_and_outnumber_completions() {
        let budget = ConnectionBudget::new(10, 0);
        let svc = budget.wrap(Never, FramingState::new());
        for _ in 0..9 {
            drop(svc.call(req()));
        }
        assert_eq!(spent(&budget).await, None, "9 of 10 must not trip");
        drop(svc.call(req()));
        assert_eq!(
            spent(&budget).await,
            Some(Spent::Cancelled),
            "the 10th cancellation trips"
        );
    }

    #[tokio::test]
    async fn completed_requests_buy_room_for_cancellations() {
        let budget = ConnectionBudget::new(10, 0);
        let (ready, never) = (
            budget.wrap(Ready, FramingState::new()),
            budget.wrap(Never, FramingState::new()),
        );
        for _ in 0..50 {
            ready.call(req()).await.unwrap();
        }
        for _ in 0..50 {
            drop(never.call(req()));
        }
        assert_eq!(spent(&budget).await, None, "50 cancelled of 100 must not trip");
        drop(never.call(req()));
        assert_eq!(
            spent(&budget).await,
            Some(Spent::Cancelled),
            "51 cancelled against 50 completed trips"
        );
    }

    #[tokio::test]
    async fn a_resolved_future_dropped_later_is_not_a_cancellation() {
        let budget = ConnectionBudget::new(1, 0);
        let svc = budget.wrap(Ready, FramingState::new());
        let mut fut = Box::pin(svc.call(req()));
        (&mut fut).await.unwrap();
        drop(fut);
        assert_eq!(spent(&budget).await, None);
    }

    #[tokio::test]
    async fn progress_counts_started_and_finished_requests() {
        let budget = ConnectionBudget::new(0, 0);
        let (ready, never) = (
            budget.wrap(Ready, FramingState::new()),
            budget.wrap(Never, FramingState::new()),
        );
        assert_eq!(budget.progress(), (0, 0));
        ready.call(req()).await.unwrap();
        assert_eq!(budget.progress(), (1, 1));
        let waiting = never.call(req());
        assert_eq!(budget.progress(), (2, 1), "a request is still waiting");
        drop(waiting);
        assert_eq!(budget.progress(), (2, 2), "cancelled: nothing waits any more");
    }

    #[tokio::test]
    async fn limits_zero_never_trip() {
        let budget = ConnectionBudget::new(0, 0);
        let svc = budget.wrap(Never, FramingState::new());
        for _ in 0..1000 {
            drop(svc.call(req()));
        }
        assert_eq!(spent(&budget).await, None);
    }

    #[tokio::test]
    async fn the_request_budget_trips_when_the_nth_request_starts() {
        let budget = ConnectionBudget::new(100, 5);
        let svc = budget.wrap(Ready, FramingState::new());
        for _ in 0..4 {
            svc.call(req()).await.unwrap();
        }
        assert_eq!(spent(&budget).await, None, "4 of 5 must not trip");
        let fifth = svc.call(req());
        assert_eq!(
            spent(&budget).await,
            Some(Spent::Requests),
            "trips before the 5th is answered"
        );
        fifth.await.unwrap();
    }
}
