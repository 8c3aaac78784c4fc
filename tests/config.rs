//! Every configuration error is a typed error naming the field; none panics.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::TestManager;
use connection_pool::{
    Config, ConnectionPool, MAX_POOL_SIZE, PoolError, TokioRuntime, ValidationPolicy,
};
use std::time::Duration;

fn builder() -> connection_pool::Builder<TestManager> {
    ConnectionPool::builder(TestManager::new())
}

fn config_field<T: std::fmt::Debug>(
    result: Result<T, PoolError<common::TestError>>,
) -> &'static str {
    match result {
        Err(PoolError::Config(e)) => {
            assert!(!e.to_string().is_empty());
            e.field()
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults_match_the_0_2_crate() {
    let config = Config::default();
    assert_eq!(config.max_size, 10);
    assert_eq!(config.min_idle, 0);
    assert_eq!(config.max_idle_time, Some(Duration::from_secs(300)));
    assert_eq!(config.max_lifetime, Some(Duration::from_secs(1800)));
    assert_eq!(config.connection_timeout, Some(Duration::from_secs(10)));
    assert_eq!(config.wait_timeout, Some(Duration::from_secs(30)));
    assert_eq!(config.cleanup_interval, Some(Duration::from_secs(30)));
    assert_eq!(
        config.validation,
        ValidationPolicy::IdleLongerThan(Duration::from_millis(500))
    );
    // Added since 0.2.
    assert_eq!(config.validation_timeout, Some(Duration::from_secs(5)));
    assert_eq!(config.max_connecting, 2);
    assert_eq!(config.leak_detection_threshold, None);
    assert_eq!(config.name, "connection-pool");
}

#[test]
fn max_connecting_zero_is_refused_and_a_zero_validation_threshold_is_accepted() {
    assert_eq!(
        config_field(builder().no_runtime().max_connecting(0).build()),
        "max_connecting"
    );
    let pool = builder()
        .no_runtime()
        .validation(ValidationPolicy::IdleLongerThan(Duration::ZERO))
        .build()
        .expect("a zero threshold is a valid setting");
    drop(futures_lite::future::block_on(pool.get_connection()).unwrap());
    drop(futures_lite::future::block_on(pool.get_connection()).unwrap());
}

#[test]
fn size_errors_name_their_field() {
    assert_eq!(
        config_field(builder().no_runtime().max_size(0).build()),
        "max_size"
    );
    assert_eq!(
        config_field(builder().no_runtime().max_size(MAX_POOL_SIZE + 1).build()),
        "max_size"
    );
    assert_eq!(
        config_field(builder().no_runtime().max_size(2).min_idle(3).build()),
        "min_idle"
    );
    // min_idle needs the cleanup task that keeps it topped up.
    assert_eq!(
        config_field(builder().no_runtime().min_idle(1).build()),
        "min_idle"
    );
}

#[test]
fn zero_and_overflowing_durations_name_their_field() {
    type Setter = fn(
        connection_pool::Builder<TestManager>,
        Duration,
    ) -> connection_pool::Builder<TestManager>;
    let setters: [(&str, Setter); 6] = [
        ("max_idle_time", |b, d| b.max_idle_time(d)),
        ("max_lifetime", |b, d| b.max_lifetime(d)),
        ("connection_timeout", |b, d| b.connection_timeout(d)),
        ("wait_timeout", |b, d| b.wait_timeout(d)),
        ("validation_timeout", |b, d| b.validation_timeout(d)),
        ("cleanup_interval", |b, d| b.cleanup_interval(d)),
    ];
    for (field, set) in setters {
        let zero = set(builder().no_runtime(), Duration::ZERO).build();
        assert_eq!(config_field(zero), field, "zero {field}");
        let huge = set(builder().no_runtime(), Duration::MAX).build();
        assert_eq!(config_field(huge), field, "overflowing {field}");
    }
    let threshold = builder()
        .no_runtime()
        .validation(ValidationPolicy::IdleLongerThan(Duration::MAX))
        .build();
    let message = threshold.as_ref().err().map(ToString::to_string);
    assert_eq!(config_field(threshold), "validation");
    // The advice names a value the setting can take.
    assert!(
        message
            .as_deref()
            .unwrap()
            .contains("ValidationPolicy::Never"),
        "{message:?}"
    );
}

#[test]
fn range_errors_say_what_to_use_instead() {
    let message = |result: Result<ConnectionPool<TestManager>, PoolError<_>>| {
        result.err().map(|e| e.to_string()).unwrap_or_default()
    };
    let too_big = message(builder().no_runtime().max_size(MAX_POOL_SIZE + 1).build());
    assert!(
        too_big.contains(&format!("use at most {MAX_POOL_SIZE}")),
        "{too_big}"
    );
    // Not `None`, which would mean the opposite of what a zero wait asks for.
    let zero_wait = message(builder().no_runtime().wait_timeout(Duration::ZERO).build());
    assert!(
        zero_wait.contains("try_get_connection") && zero_wait.contains("wait without limit"),
        "{zero_wait}"
    );
    // A wait too long for the clock asks for no limit, and nothing about not waiting.
    let endless_wait = message(builder().no_runtime().wait_timeout(Duration::MAX).build());
    assert!(
        endless_wait.contains("use None to wait without limit instead")
            && !endless_wait.contains("try_get_connection"),
        "{endless_wait}"
    );
}

#[test]
fn timers_without_a_runtime_are_refused() {
    // The defaults have timeouts and a cleanup task, so they need a runtime; the message
    // names the one call that turns them all off.
    match builder().build() {
        Err(e @ PoolError::NoRuntime { .. }) => {
            assert!(matches!(
                e,
                PoolError::NoRuntime {
                    setting: "connection_timeout",
                    ..
                }
            ));
            assert!(e.to_string().contains("Builder::no_runtime()"), "{e}");
            // An async-std user is told which runtime to pass.
            assert!(e.to_string().contains("SmolRuntime::new()"), "{e}");
            assert!(e.to_string().contains("async-std"), "{e}");
        }
        other => panic!("expected NoRuntime, got {other:?}"),
    }
    // A cleanup interval below 1 ms only spins.
    let spinning = builder()
        .no_runtime()
        .cleanup_interval(Duration::from_nanos(1))
        .build();
    assert_eq!(config_field(spinning), "cleanup_interval");
    for (setting, b) in [
        (
            "wait_timeout",
            builder().no_runtime().wait_timeout(Duration::from_secs(1)),
        ),
        (
            "validation_timeout",
            builder()
                .no_runtime()
                .validation_timeout(Duration::from_secs(1)),
        ),
        (
            "cleanup_interval",
            builder()
                .no_runtime()
                .cleanup_interval(Duration::from_secs(1)),
        ),
        (
            "leak_detection_threshold",
            builder()
                .no_runtime()
                .leak_detection_threshold(Duration::from_secs(1)),
        ),
    ] {
        match b.build() {
            Err(e @ PoolError::NoRuntime { .. }) => {
                assert!(e.to_string().contains(setting), "{e}");
            }
            other => panic!("expected NoRuntime for {setting}, got {other:?}"),
        }
    }
    assert!(builder().no_runtime().build().is_ok());
    // `no_runtime` turns off everything that needs one, leak detection included.
    let leak_watch_first = builder().leak_detection_threshold(Duration::from_secs(1));
    assert!(leak_watch_first.no_runtime().build().is_ok());
}

#[tokio::test]
async fn runtime_only_calls_are_refused_without_a_runtime() {
    let pool = builder().no_runtime().build().unwrap();
    match pool.get_connection_timeout(Duration::from_secs(1)).await {
        Err(
            e @ PoolError::NoRuntime {
                setting: "get_connection_timeout",
                ..
            },
        ) => {
            // A method, not a setting: the way out is the untimed call.
            assert!(e.to_string().ends_with("or call get_connection"), "{e}");
        }
        other => panic!("expected NoRuntime, got {:?}", other.map(|c| c.id)),
    }
    match pool.restart_cleanup_task(Duration::from_secs(1)) {
        Err(e @ PoolError::NoRuntime { .. }) => {
            // The pool exists: the way out is to build it with a runtime, not a setting.
            assert!(e.to_string().ends_with("when building the pool"), "{e}");
        }
        other => panic!("expected NoRuntime, got {other:?}"),
    }

    let pool = builder().runtime(TokioRuntime::current()).build().unwrap();
    for interval in [Duration::ZERO, Duration::from_micros(999), Duration::MAX] {
        let refused = pool.restart_cleanup_task(interval);
        let message = refused.as_ref().err().map(ToString::to_string).unwrap();
        assert_eq!(config_field(refused), "cleanup_interval", "{interval:?}");
        // The method takes a Duration: the advice cannot be "use None".
        assert!(message.contains("stop_cleanup_task"), "{message}");
    }
    assert!(pool.restart_cleanup_task(Duration::from_millis(1)).is_ok());
    assert!(pool.restart_cleanup_task(Duration::from_secs(5)).is_ok());
    pool.close();
    assert!(matches!(
        pool.restart_cleanup_task(Duration::from_secs(5)),
        Err(PoolError::Closed)
    ));
}

#[test]
fn a_whole_config_can_be_passed_at_once() {
    let config = Config {
        max_size: 3,
        ..Config::default()
    };
    let pool = builder()
        .config(config)
        .no_runtime()
        .build()
        .expect("valid config");
    assert_eq!(pool.config().max_size, 3);
    assert_eq!(pool.status().max_size, 3);
}

/// A connection type stored inline, `N` bytes.
struct Inline<const N: usize>;

impl<const N: usize> connection_pool::ConnectionManager for Inline<N> {
    type Connection = [u8; N];
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<[u8; N], std::io::Error> {
        Ok([0; N])
    }

    async fn is_valid(&self, _conn: &mut [u8; N]) -> Result<(), std::io::Error> {
        Ok(())
    }
}

#[test]
fn an_idle_queue_too_large_to_allocate_is_a_config_error_not_an_abort() {
    // 1 MiB connections times 65,536 places: 64 GiB up front, which aborted the process.
    let built = ConnectionPool::builder(Inline::<{ 1 << 20 }>)
        .max_size(MAX_POOL_SIZE)
        .no_runtime()
        .build();
    let Err(PoolError::Config(error)) = built else {
        panic!("expected a config error");
    };
    assert_eq!(error.field(), "max_size");
    assert!(
        error.to_string().contains("box the connection type"),
        "{error}"
    );
    // Boxed, the same pool takes a pointer per place.
    let boxed = ConnectionPool::builder(Boxed)
        .max_size(MAX_POOL_SIZE)
        .no_runtime()
        .build();
    assert!(boxed.is_ok());
    // 16 KiB inline: 1 GiB at 65,536 places (refused), 16 MiB at 1,024 (accepted).
    let refused = ConnectionPool::builder(Inline::<{ 1 << 14 }>)
        .max_size(MAX_POOL_SIZE)
        .no_runtime()
        .build();
    assert!(matches!(refused, Err(PoolError::Config(_))));
    let accepted = ConnectionPool::builder(Inline::<{ 1 << 14 }>)
        .max_size(1024)
        .no_runtime()
        .build();
    assert!(accepted.is_ok());
}

/// [`Inline`]'s 1 MiB connection, boxed.
struct Boxed;

impl connection_pool::ConnectionManager for Boxed {
    type Connection = Box<[u8; 1 << 20]>;
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<Self::Connection, std::io::Error> {
        Ok(vec![0u8; 1 << 20].into_boxed_slice().try_into().unwrap())
    }

    async fn is_valid(&self, _conn: &mut Self::Connection) -> Result<(), std::io::Error> {
        Ok(())
    }
}
