//! Rebuilding the read models from scratch (`latchkey replay`): the new ones are built beside
//! the live ones (a file beside the live file, or a schema beside the live PostgreSQL
//! schema) and then moved over them, so an interrupted rebuild leaves the live ones in
//! place. The process managers' checkpoint is carried over: a rebuild does not re-run
//! reactions.

use crate::{Place, ProjectionError, ReadModels};
use latchkey_store::Position;
use std::path::{Path, PathBuf};

/// The schema a PostgreSQL rebuild is built in.
const REBUILD_SCHEMA: &str = "latchkey_read_rebuild";

/// Read models being rebuilt beside the live ones at a [`Place`].
pub struct Rebuild {
    models: ReadModels,
    live: Live,
}

enum Live {
    File {
        path: PathBuf,
        building: PathBuf,
        process_checkpoint: Option<Position>,
    },
    Postgres {
        url: String,
    },
}

impl Rebuild {
    /// Starts empty read models beside the live ones at `place`, dropping what an earlier,
    /// interrupted rebuild left. Blocking.
    pub fn begin(place: impl Into<Place>) -> Result<Self, ProjectionError> {
        match place.into() {
            Place::File(path) => {
                let process_checkpoint = if path.exists() {
                    ReadModels::open(&path)?.process_checkpoint()?
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
                Ok(Self {
                    models: ReadModels::open(&building)?,
                    live: Live::File {
                        path,
                        building,
                        process_checkpoint,
                    },
                })
            }
            Place::Postgres(url) => {
                ReadModels::drop_postgres_schema(&url, REBUILD_SCHEMA)?;
                Ok(Self {
                    models: ReadModels::open_postgres_schema(&url, REBUILD_SCHEMA)?,
                    live: Live::Postgres { url },
                })
            }
        }
    }

    /// The read models being built: apply the whole log to them.
    pub fn models(&mut self) -> &mut ReadModels {
        &mut self.models
    }

    /// Makes the rebuilt read models the live ones, with the live ones' process checkpoint.
    pub fn finish(self) -> Result<(), ProjectionError> {
        match self.live {
            Live::File {
                path,
                building,
                process_checkpoint,
            } => {
                if let Some(checkpoint) = process_checkpoint {
                    self.models.set_process_checkpoint(checkpoint)?;
                }
                self.models.close()?;
                for stale in ["wal", "shm"] {
                    let file = path.with_extension(format!("db-{stale}"));
                    if file.exists() {
                        std::fs::remove_file(&file).map_err(io(&file))?;
                    }
                }
                std::fs::rename(&building, &path).map_err(io(&path))?;
                Ok(())
            }
            Live::Postgres { url } => {
                drop(self.models);
                ReadModels::replace_postgres(&url, REBUILD_SCHEMA)
            }
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ProjectionError {
    let path = path.display().to_string();
    move |source| ProjectionError::Io {
        path: path.clone(),
        source,
    }
}
