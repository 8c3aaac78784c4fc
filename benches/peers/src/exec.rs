//! The executors a run can use (a fresh tokio multi-thread runtime or a fresh smol `Executor`
//! on its own threads), and [`run_limited`], which cancels a run that stops making progress
//! (a hang) or that runs too long, instead of waiting for it.

use futures_lite::FutureExt;
use std::{
    any::Any,
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};

/// Which executor a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecKind {
    /// A tokio multi-thread runtime.
    Tokio,
    /// A `smol::Executor` run by as many threads.
    Smol,
}

impl ExecKind {
    /// The name used in tables and files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Smol => "smol",
        }
    }

    /// Parses `tokio` or `smol`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "tokio" => Some(Self::Tokio),
            "smol" => Some(Self::Smol),
            _ => None,
        }
    }
}

/// Executor-specific helpers that need no handle: yielding and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `tokio::task::yield_now` and `tokio::time::timeout`.
    Tokio,
    /// `futures_lite::future::yield_now` and async-io timers (smol's).
    Smol,
}

impl Flavor {
    /// Gives the executor a chance to run other tasks, once.
    pub async fn yield_now(self) {
        match self {
            Self::Tokio => tokio::task::yield_now().await,
            Self::Smol => futures_lite::future::yield_now().await,
        }
    }

    /// Runs `fut` for at most `limit`; `None` when time ran out first.
    pub async fn timeout<F: Future>(self, limit: Duration, fut: F) -> Option<F::Output> {
        match self {
            Self::Tokio => tokio::time::timeout(limit, fut).await.ok(),
            Self::Smol => {
                let timer = async {
                    smol::Timer::after(limit).await;
                    None
                };
                async { Some(fut.await) }.or(timer).await
            }
        }
    }
}

/// Spawns tasks onto the executor of the current run.
#[derive(Clone)]
pub enum Spawner {
    /// The run's tokio runtime.
    Tokio(tokio::runtime::Handle),
    /// The run's smol executor. Weak, so that tasks holding a spawner (mobc's manager does)
    /// do not keep the executor alive after the run: dropping it cancels what is left.
    Smol(Weak<smol::Executor<'static>>),
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tokio(_) => "Spawner::Tokio",
            Self::Smol(_) => "Spawner::Smol",
        })
    }
}

impl Spawner {
    /// Yielding and timeouts for this executor.
    pub fn flavor(&self) -> Flavor {
        match self {
            Self::Tokio(_) => Flavor::Tokio,
            Self::Smol(_) => Flavor::Smol,
        }
    }

    /// Spawns `fut`; awaiting the handle gives its output (and re-raises its panic).
    pub fn spawn<T, F>(&self, fut: F) -> Join<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        match self {
            Self::Tokio(handle) => Join::Tokio(handle.spawn(fut)),
            Self::Smol(executor) => Join::Smol(
                executor
                    .upgrade()
                    .expect("spawned after the run's executor was dropped")
                    .spawn(fut),
            ),
        }
    }

    /// Spawns `fut` and lets it run on its own.
    pub fn spawn_detached<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Self::Tokio(handle) => drop(handle.spawn(fut)),
            Self::Smol(executor) => {
                if let Some(executor) = executor.upgrade() {
                    executor.spawn(fut).detach();
                }
            }
        }
    }
}

/// A handle to a task spawned with [`Spawner::spawn`].
#[derive(Debug)]
pub enum Join<T> {
    /// A tokio task.
    Tokio(tokio::task::JoinHandle<T>),
    /// A smol task.
    Smol(smol::Task<T>),
}

impl<T> Future for Join<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Self::Tokio(handle) => match Pin::new(handle).poll(cx) {
                Poll::Ready(Ok(value)) => Poll::Ready(value),
                Poll::Ready(Err(error)) if error.is_panic() => {
                    std::panic::resume_unwind(error.into_panic())
                }
                Poll::Ready(Err(error)) => panic!("task ended without a result: {error}"),
                Poll::Pending => Poll::Pending,
            },
            Self::Smol(task) => Pin::new(task).poll(cx),
        }
    }
}

/// How a limited run ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It finished with this value.
    Done(T),
    /// It made no progress for the stall limit; it was cancelled.
    Hang,
    /// It was still making progress at the total limit; it was cancelled.
    Overran,
    /// It panicked (a pool that cannot run on this executor, typically); the message.
    Panic(String),
}

/// When [`run_limited`] gives up on a run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A run whose [`Progress`] does not move for this long is a hang. A run that never
    /// reports progress is judged by its total time against this limit alone.
    pub stall: Duration,
    /// A run still going after this long is cancelled even while it progresses, so one very
    /// slow contender cannot hold the whole benchmark up.
    pub total: Duration,
}

/// How often the waiting thread looks at a run's progress.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The work a run's tasks have done so far, for telling a slow run from a stuck one.
///
/// A run installs one [`TaskCounter`] per task with [`Progress::counters`]; each task advances
/// only its own, which sits on a cache line of its own, so counting adds no shared-line write
/// to the measured loop (a shared counter would, and would slow the runs it measures).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    counters: Arc<Mutex<Option<Arc<[TaskCounter]>>>>,
}

impl Progress {
    /// Installs `tasks` fresh counters, all at zero, and returns them. Counters installed
    /// earlier in the run stop counting; call this once, before the timed part starts.
    pub fn counters(&self, tasks: usize) -> Arc<[TaskCounter]> {
        let fresh: Arc<[TaskCounter]> = (0..tasks).map(|_| TaskCounter::default()).collect();
        *self.counters.lock().expect("never poisoned") = Some(Arc::clone(&fresh));
        fresh
    }

    /// The sum of the installed counters; a snapshot.
    fn total(&self) -> usize {
        let counters = self.counters.lock().expect("never poisoned");
        counters
            .iter()
            .flat_map(|all| all.iter())
            .map(|counter| counter.0.load(Ordering::Relaxed))
            .fold(0, usize::wrapping_add)
    }
}

/// One task's count of finished operations (see [`Progress`]).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct TaskCounter(AtomicUsize);

impl TaskCounter {
    /// Records that the task has finished `done` operations. Only the task that owns the
    /// counter writes it, so a plain store does; no read-modify-write is needed.
    pub fn set(&self, done: usize) {
        self.0.store(done, Ordering::Relaxed);
    }
}

/// Runs the future made by `make` on a fresh executor of `kind` with `threads` worker threads,
/// until it finishes, stalls or overruns (see [`Limits`]). `make` gets the executor's spawner
/// and the [`Progress`] the run may report to.
///
/// The caller's thread only waits on a channel and looks at the progress now and then, so a
/// run whose tasks all wait for ever (a lost wake-up) or even spin is still noticed. Its tasks
/// are then cancelled by shutting the executor down; a thread stuck in a spin is left behind
/// rather than waited for.
pub fn run_limited<T, F, Fut>(kind: ExecKind, threads: usize, limits: Limits, make: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce(Spawner, Progress) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let wrap = move |fut: Fut| async move {
        let result = AssertUnwindSafe(fut).catch_unwind().await;
        let _ = tx.send(result.map_err(panic_message));
    };
    let progress = Progress::default();
    match kind {
        ExecKind::Tokio => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .expect("build a tokio runtime");
            let spawner = Spawner::Tokio(runtime.handle().clone());
            drop(runtime.spawn(wrap(make(spawner, progress.clone()))));
            let outcome = wait(&rx, limits, &progress);
            match outcome {
                // Every task has finished: dropping the runtime just joins its threads.
                Outcome::Done(_) => drop(runtime),
                _ => runtime.shutdown_timeout(Duration::from_secs(1)),
            }
            outcome
        }
        ExecKind::Smol => {
            let executor = Arc::new(smol::Executor::new());
            let (stop, stopped) = smol::channel::bounded::<()>(1);
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let executor = Arc::clone(&executor);
                    let stopped = stopped.clone();
                    thread::spawn(move || smol::block_on(executor.run(stopped.recv())))
                })
                .collect();
            let spawner = Spawner::Smol(Arc::downgrade(&executor));
            executor
                .spawn(wrap(make(spawner, progress.clone())))
                .detach();
            let outcome = wait(&rx, limits, &progress);
            // Closing the channel ends every worker's `run` at its next scheduling point.
            drop(stop);
            if matches!(outcome, Outcome::Done(_)) {
                for worker in workers {
                    let _ = worker.join();
                }
            }
            // The last strong reference (unless a worker is stuck): dropping the executor
            // cancels the tasks still in it.
            drop(executor);
            outcome
        }
    }
}

fn wait<T>(
    rx: &mpsc::Receiver<Result<T, String>>,
    limits: Limits,
    progress: &Progress,
) -> Outcome<T> {
    let start = Instant::now();
    let (mut seen, mut moved_at) = (progress.total(), start);
    loop {
        match rx.recv_timeout(LOOK_EVERY) {
            Ok(Ok(value)) => return Outcome::Done(value),
            Ok(Err(message)) => return Outcome::Panic(message),
            // The run's future was dropped without a result: it can no longer finish.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Outcome::Hang,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let total = progress.total();
        if total != seen {
            (seen, moved_at) = (total, now);
        }
        if now.duration_since(moved_at) >= limits.stall {
            return Outcome::Hang;
        }
        if now.duration_since(start) >= limits.total {
            return Outcome::Overran;
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Replaces the panic hook with one that prints nothing: panics in runs are caught and reported
/// as a table cell (and in the output files) with their message instead.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}
