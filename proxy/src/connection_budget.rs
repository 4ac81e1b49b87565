//! Per-connection budget of requests the client cancels before their response is ready:
//! the defence against the HTTP/2 "Rapid Reset" variant (CVE-2023-44487) that the h2
//! crate's pending-accept counter cannot see, where each stream is left open long enough
//! to be accepted and forwarded upstream and only then reset. Every such stream costs the
//! proxy an upstream request and the attacker nothing, so a connection whose cancellations
//! pass the budget while outnumbering its completed requests is told to go away.
//!
//! On HTTP/1 a cancelled request means a closed connection, so the budget only ever trips
//! on HTTP/2; it costs one uncontended atomic add per request either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::service::Service;
use tokio::sync::Notify;

/// Counts one connection's completed and cancelled requests.
#[derive(Debug)]
pub struct CancelBudget {
    /// Cancellations allowed before the ratio test applies; 0 disables the budget.
    limit: u32,
    completed: AtomicU32,
    cancelled: AtomicU32,
    tripped: AtomicBool,
    notify: Notify,
}

impl CancelBudget {
    /// A budget of `limit` cancelled requests per connection (0: unlimited).
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            completed: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Wraps a connection's service so each of its requests is counted here.
    pub fn wrap<S>(self: &Arc<Self>, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }

    /// Resolves once the connection has spent its budget (never, with limit 0).
    pub async fn exhausted(&self) {
        if self.limit == 0 {
            return std::future::pending().await;
        }
        // A trip before this call left a permit behind, so it is not missed.
        self.notify.notified().await;
    }

    fn complete(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn cancel(&self) {
        if self.limit == 0 {
            return;
        }
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        // A client that mostly finishes its requests (a browser leaving pages, a gRPC
        // client with deadlines) may cancel many; one that mostly cancels may not.
        if cancelled >= self.limit
            && cancelled > self.completed.load(Ordering::Relaxed)
            && !self.tripped.swap(true, Ordering::Relaxed)
        {
            self.notify.notify_one();
        }
    }
}

/// A service whose requests are counted against a [`CancelBudget`].
#[derive(Debug, Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: Arc<CancelBudget>,
}

impl<S, R> Service<R> for Budgeted<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, req: R) -> Self::Future {
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
        budget: Option<Arc<CancelBudget>>,
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

    impl Service<()> for Never {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Pending<Result<(), Infallible>>;
        fn call(&self, _: ()) -> Self::Future {
            std::future::pending()
        }
    }

    #[derive(Clone)]
    struct Ready;

    impl Service<()> for Ready {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Ready<Result<(), Infallible>>;
        fn call(&self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    async fn is_exhausted(b: &CancelBudget) -> bool {
        tokio::time::timeout(Duration::from_millis(20), b.exhausted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn trips_when_cancellations_reach_the_limit_and_outnumber_completions() {
        let budget = CancelBudget::new(10);
        let svc = budget.wrap(Never);
        for _ in 0..9 {
            drop(svc.call(()));
        }
        assert!(!is_exhausted(&budget).await, "9 of 10 must not trip");
        drop(svc.call(()));
        assert!(is_exhausted(&budget).await, "the 10th cancellation trips");
    }

    #[tokio::test]
    async fn completed_requests_buy_room_for_cancellations() {
        let budget = CancelBudget::new(10);
        let (ready, never) = (budget.wrap(Ready), budget.wrap(Never));
        for _ in 0..50 {
            ready.call(()).await.unwrap();
        }
        for _ in 0..50 {
            drop(never.call(()));
        }
        assert!(!is_exhausted(&budget).await, "50 cancelled of 100 must not trip");
        drop(never.call(()));
        assert!(is_exhausted(&budget).await, "51 cancelled against 50 completed trips");
    }

    #[tokio::test]
    async fn a_resolved_future_dropped_later_is_not_a_cancellation() {
        let budget = CancelBudget::new(1);
        let svc = budget.wrap(Ready);
        let mut fut = Box::pin(svc.call(()));
        (&mut fut).await.unwrap();
        drop(fut);
        assert!(!is_exhausted(&budget).await);
    }

    #[tokio::test]
    async fn limit_zero_never_trips() {
        let budget = CancelBudget::new(0);
        let svc = budget.wrap(Never);
        for _ in 0..1000 {
            drop(svc.call(()));
        }
        assert!(!is_exhausted(&budget).await);
    }
}
