//! `latchkey replay`: rebuilds every read model from the log. The new read models are built
//! beside the live file and then moved over it, so an interrupted replay leaves the old read
//! models in place. The process managers' checkpoint is carried over: replaying the read
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

/// Rebuilds the read models at `path` from `store`; `progress(done, total)` is called as it
/// goes. Returns the number of events applied.
pub async fn replay(
    store: &dyn EventStore,
    path: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReplayError::Io {
            path: path.clone(),
            source,
        }
    };
    // Counted first, so the progress bar knows its length.
    let mut total = 0u64;
    let mut after = None;
    loop {
        let page = store.read_all(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        total += page.len() as u64;
    }
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
    let mut done = 0u64;
    let mut after = None;
    progress(0, total);
    loop {
        let page = store.read_all(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        models.apply(&page)?;
        done += page.len() as u64;
        progress(done, total.max(done));
    }
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
