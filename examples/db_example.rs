//! A custom connection type: an in-memory "database session" with a transaction flag, on smol.
//!
//! Shows `has_broken` (a session returned mid-transaction is destroyed, not reused), `detach`
//! and `try_get_connection`.
//!
//! Run: `cargo run --example db_example --features smol`

use connection_pool::{ConnectionManager, ConnectionPool, SmolRuntime};
use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

/// The shared "server" all sessions talk to.
type Store = Arc<Mutex<HashMap<String, String>>>;

struct Session {
    id: u32,
    store: Store,
    in_transaction: bool,
}

impl Session {
    fn begin(&mut self) {
        self.in_transaction = true;
    }

    fn commit(&mut self) {
        self.in_transaction = false;
    }

    fn set(&mut self, key: &str, value: &str) {
        self.store
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }

    fn get(&self, key: &str) -> Option<String> {
        self.store.lock().unwrap().get(key).cloned()
    }
}

#[derive(Debug)]
struct DbError(String);

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

struct DbManager {
    store: Store,
    next_id: AtomicU32,
}

impl ConnectionManager for DbManager {
    type Connection = Session;
    type Error = DbError;

    async fn create_connection(&self) -> Result<Session, DbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        println!("  (opening session {id})");
        Ok(Session {
            id,
            store: Arc::clone(&self.store),
            in_transaction: false,
        })
    }

    async fn is_valid(&self, session: &mut Session) -> Result<(), DbError> {
        // The equivalent of `SELECT 1`.
        if session.store.lock().is_ok() {
            Ok(())
        } else {
            Err(DbError("store poisoned".into()))
        }
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        // Never hand out a session with an open transaction.
        session.in_transaction
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(async {
        let manager = DbManager {
            store: Store::default(),
            next_id: AtomicU32::new(1),
        };
        let pool = ConnectionPool::builder(manager)
            .name("db")
            .max_size(2)
            .wait_timeout(Duration::from_secs(2))
            .runtime(SmolRuntime::new())
            .build()?;

        {
            let mut session = pool.get_connection().await?;
            session.begin();
            session.set("greeting", "hello");
            session.commit();
            println!("session {} committed greeting", session.id);
        }
        let session = pool
            .try_get_connection()
            .expect("the session is idle again");
        println!(
            "session {} reads greeting = {:?}",
            session.id,
            session.get("greeting")
        );
        drop(session);

        {
            let mut session = pool.get_connection().await?;
            session.begin();
            session.set("half", "written");
            println!("session {} returned mid-transaction", session.id);
        }
        println!(
            "destroyed as broken: {}",
            pool.status().counters.destroyed.broken
        );

        let session = pool.get_connection().await?;
        println!("got a fresh session {}", session.id);
        let owned = session.detach();
        println!(
            "detached session {}; pool size is now {}",
            owned.id,
            pool.status().size
        );
        Ok(())
    })
}
