//! `latchkey replay`: rebuilds every read model from the log, beside the live ones and then
//! moved over them ([`Rebuild`]), so an interrupted replay leaves the old read models in
//! place and the process managers' checkpoint is carried over. Run it while the server is
//! stopped.

use latchkey_projections::{Place, ProjectionError, Rebuild};
use latchkey_store::{EventStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Events read and applied per transaction.
const BATCH: usize = 1000;

/// Rebuilds the read models at `place` from `store`; `progress(done, total)` is called as it
/// goes. Returns the number of events applied.
pub async fn replay(
    store: &dyn EventStore,
    place: Place,
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
    let mut rebuild = Rebuild::begin(place)?;
    progress(0, total);
    let mut done = 0u64;
    let mut after = None;
    loop {
        let page = store.read_all(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        rebuild.models().apply(&page)?;
        done += page.len() as u64;
        progress(done, total.max(done));
    }
    rebuild.finish()?;
    Ok(done)
}
