//! UNFINISHED (issue 5): the postgres backend is being written.

use crate::{EventStore, StoreError};
use std::sync::Arc;

/// Connects to the store `url` names; `open_url` calls this.
pub async fn open(_url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    Err(StoreError::Unavailable(
        "the postgres event store backend is not built yet".into(),
    ))
}
