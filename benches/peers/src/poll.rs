//! Polling a future that must complete at once, without an executor.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

/// Polls `future` once with a no-op waker and returns its output. For the single-thread and
/// two-thread loops: `get_connection` of an idle connection (or a creation by a manager that
/// never awaits) completes on its first poll.
///
/// # Panics
///
/// If the future is not ready at once (the pool would have had to wait).
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future awaited: no connection was idle"),
    }
}
