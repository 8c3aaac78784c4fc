//! The observer hook sees every create, failure, checkout, return, timeout, destroy and detach, with
//! the durations a manual clock makes exact.

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, eventually};
use connection_pool::{
    ConnectionPool, CreateFailure, DestroyReason, HistogramObserver, PoolObserver, TimeoutPhase,
    ValidationPolicy,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Records every event as a line of text, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }
}

impl PoolObserver for Recorder {
    fn on_create(&self, duration: Duration) {
        self.push(format!("create {duration:?}"));
    }

    fn on_create_failure(&self, _duration: Duration, failure: CreateFailure<'_>) {
        match failure {
            CreateFailure::Error(e) => self.push(format!("create failed: {e}")),
            CreateFailure::TimedOut => self.push("create timed out".to_owned()),
            other => self.push(format!("create failed somehow else: {other:?}")),
        }
    }

    fn on_checkout(&self, wait: Duration) {
        self.push(format!("checkout {wait:?}"));
    }

    fn on_return(&self, held: Duration) {
        self.push(format!("return {held:?}"));
    }

    fn on_timeout(&self, phase: TimeoutPhase, waited: Duration) {
        self.push(format!("timeout {phase:?} {waited:?}"));
    }

    fn on_destroy(&self, reason: DestroyReason) {
        self.push(format!("destroy {}", reason.as_str()));
    }

    fn on_detach(&self) {
        self.push("detach".to_owned());
    }
}

#[tokio::test]
async fn every_event_reaches_the_observer_with_its_duration() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let histograms = Arc::new(HistogramObserver::new());
    let both = Fanout(vec![
        Arc::clone(&recorder) as Arc<dyn PoolObserver>,
        Arc::clone(&histograms) as Arc<dyn PoolObserver>,
    ]);
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .wait_timeout(Duration::from_secs(5))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .observer(both)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();

    let mut conn = pool.get_connection().await.unwrap();
    clock.advance(Duration::from_secs(3));
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_connection().await.map(|c| c.id) }
    });
    eventually("a waiter", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(6));
    assert!(waiter.await.unwrap().is_err());
    conn.mark_broken();
    drop(conn);
    manager.counts.set_create(Gate::Fail);
    assert!(pool.get_connection().await.is_err());

    assert_eq!(
        recorder.events(),
        [
            "create 0ns",
            "checkout 0ns",
            "timeout Waiting 6s",
            "return 9s",
            "destroy broken",
            "create failed: refused by the test",
        ]
    );
    assert_eq!(histograms.create().count(), 1);
    assert_eq!(histograms.wait().count(), 1);
    assert_eq!(histograms.hold().max(), Duration::from_secs(9));
    assert_eq!(histograms.timeouts(TimeoutPhase::Waiting), 1);
    assert_eq!(histograms.destroyed(DestroyReason::Broken), 1);
    assert_eq!(histograms.create_failures(), 1);
    let summary = histograms.summary();
    assert!(summary.starts_with("wait   count         1"), "{summary}");
    assert!(summary.contains("broken 1"), "{summary}");
}

#[tokio::test]
async fn an_owned_guard_reports_one_return_with_the_whole_hold_time() {
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let pool = ConnectionPool::builder(TestManager::new())
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .observer(Arc::clone(&recorder))
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    let conn = pool.get_connection().await.unwrap();
    clock.advance(Duration::from_secs(2));
    let conn = conn.into_owned();
    clock.advance(Duration::from_secs(3));
    drop(conn);
    assert_eq!(
        recorder.events(),
        ["create 0ns", "checkout 0ns", "return 5s"],
        "making the guard owned is not a return"
    );
}

#[tokio::test]
async fn a_detached_connection_is_reported_so_that_an_open_connections_gauge_stays_right() {
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let histograms = Arc::new(HistogramObserver::new());
    let pool = ConnectionPool::builder(TestManager::new())
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .observer(Fanout(vec![
            Arc::clone(&recorder) as Arc<dyn PoolObserver>,
            Arc::clone(&histograms) as Arc<dyn PoolObserver>,
        ]))
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    let first = pool.get_connection().await.unwrap();
    let second = pool.get_connection().await.unwrap();
    clock.advance(Duration::from_secs(2));
    let kept = first.detach();
    drop(second);

    assert_eq!(
        recorder.events(),
        [
            "create 0ns",
            "checkout 0ns",
            "create 0ns",
            "checkout 0ns",
            "return 2s",
            "detach",
            "return 2s",
        ]
    );
    let open = histograms.create().count()
        - DestroyReason::ALL
            .iter()
            .map(|&r| histograms.destroyed(r))
            .sum::<u64>()
        - histograms.detached();
    assert_eq!(open, pool.status().size as u64);
    assert_eq!(open, 1);
    assert!(histograms.summary().ends_with("; detached 1"));
    drop(kept);
}

/// Sends each event to several observers.
struct Fanout(Vec<Arc<dyn PoolObserver>>);

impl PoolObserver for Fanout {
    fn on_create(&self, duration: Duration) {
        self.0.iter().for_each(|o| o.on_create(duration));
    }

    fn on_create_failure(&self, duration: Duration, failure: CreateFailure<'_>) {
        self.0
            .iter()
            .for_each(|o| o.on_create_failure(duration, failure));
    }

    fn on_checkout(&self, wait: Duration) {
        self.0.iter().for_each(|o| o.on_checkout(wait));
    }

    fn on_return(&self, held: Duration) {
        self.0.iter().for_each(|o| o.on_return(held));
    }

    fn on_timeout(&self, phase: TimeoutPhase, waited: Duration) {
        self.0.iter().for_each(|o| o.on_timeout(phase, waited));
    }

    fn on_destroy(&self, reason: DestroyReason) {
        self.0.iter().for_each(|o| o.on_destroy(reason));
    }

    fn on_detach(&self) {
        self.0.iter().for_each(|o| o.on_detach());
    }
}
