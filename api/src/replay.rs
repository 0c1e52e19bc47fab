//! `latchkey replay`: rebuilds every read model from the log. The new read models are built
//! beside the live ones (a file beside the live file, or a schema beside the live PostgreSQL
//! schema) and then moved over them, so an interrupted replay leaves the old read models in
//! place. The process managers' checkpoint is carried over: replaying the read
//! models does not re-run reactions. Run it while the server is stopped.

use latchkey_projections::{ProjectionError, ReadModels};
use latchkey_store::{EventStore, StoreError};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Events read and applied per transaction.
const BATCH: usize = 1000;

/// Where the live read models are.
pub enum Target<'a> {
    File(&'a Path),
    /// The read-model schema of this PostgreSQL database.
    Postgres(&'a str),
}

/// The schema a PostgreSQL rebuild is built in.
const REBUILD_SCHEMA: &str = "latchkey_read_rebuild";

/// Rebuilds the read models at `target` from `store`; `progress(done, total)` is called as it
/// goes. Returns the number of events applied.
pub async fn replay(
    store: &dyn EventStore,
    target: Target<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    // Counted first, so the progress bar knows its length.
    let mut total = 0u64;
    let mut after = None;
    loop {
        let page = store.read_all(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        total += page.len() as u64;
    }
    match target {
        Target::File(path) => replay_file(store, path, total, progress).await,
        Target::Postgres(url) => {
            ReadModels::drop_postgres_schema(url, REBUILD_SCHEMA)?;
            let mut models = ReadModels::open_postgres_schema(url, REBUILD_SCHEMA)?;
            progress(0, total);
            let done = apply_all(store, &mut models, total, &mut progress).await?;
            drop(models);
            ReadModels::replace_postgres(url, REBUILD_SCHEMA)?;
            Ok(done)
        }
    }
}

async fn apply_all(
    store: &dyn EventStore,
    models: &mut ReadModels,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let mut done = 0u64;
    let mut after = None;
    loop {
        let page = store.read_all(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        models.apply(&page)?;
        done += page.len() as u64;
        progress(done, total.max(done));
    }
    Ok(done)
}

async fn replay_file(
    store: &dyn EventStore,
    path: &Path,
    total: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReplayError::Io {
            path: path.clone(),
            source,
        }
    };
    let process_checkpoint = if path.exists() {
        ReadModels::open(path)?.process_checkpoint()?
    } else {
        None
    };
    let building = path.with_extension("rebuild");
    for leftover in [
        building.clone(),
        building.with_extension("rebuild-wal"),
        building.with_extension("rebuild-shm"),
    ] {
        if leftover.exists() {
            std::fs::remove_file(&leftover).map_err(io(&leftover))?;
        }
    }
    let mut models = ReadModels::open(&building)?;
    progress(0, total);
    let done = apply_all(store, &mut models, total, &mut progress).await?;
    if let Some(checkpoint) = process_checkpoint {
        models.set_process_checkpoint(checkpoint)?;
    }
    models.close()?;
    for stale in ["wal", "shm"] {
        let file = path.with_extension(format!("db-{stale}"));
        if file.exists() {
            std::fs::remove_file(&file).map_err(io(&file))?;
        }
    }
    std::fs::rename(&building, path).map_err(io(path))?;
    Ok(done)
}
