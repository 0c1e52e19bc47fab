//! The append rules every backend applies identically: which batches are valid, when an
//! expected state holds, and when a batch replays an earlier append. Pure functions over
//! what a backend looked up; they must never touch storage themselves.

use std::collections::HashSet;

use uuid::Uuid;

use crate::api::{AppendResult, ExpectedState, NewEvent, Position, StoreError, StreamName};

/// Rejects batches no backend may write. An empty batch is an error rather than a no-op:
/// it has no last event, so there is no position an `AppendResult` could honestly report.
pub(crate) fn validate_batch(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend(
            "an append needs at least one event".into(),
        ));
    }
    if let Some(event) = events.iter().find(|e| e.event_type.is_empty()) {
        return Err(StoreError::InvalidAppend(format!(
            "event {} has an empty event type",
            event.id
        )));
    }
    // Quadratic beats hashing for the small batches that dominate.
    let duplicate = if events.len() <= 16 {
        events
            .iter()
            .enumerate()
            .find(|(i, e)| events[..*i].iter().any(|earlier| earlier.id == e.id))
            .map(|(_, e)| e.id)
    } else {
        let mut seen = HashSet::with_capacity(events.len());
        events.iter().find(|e| !seen.insert(e.id)).map(|e| e.id)
    };
    match duplicate {
        Some(id) => Err(StoreError::InvalidAppend(format!(
            "event id {id} appears twice in one append"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn check_expected(
    stream: &StreamName,
    expected: ExpectedState,
    actual: Option<u64>,
) -> Result<(), StoreError> {
    if expected.is_satisfied_by(actual) {
        Ok(())
    } else {
        Err(StoreError::WrongExpectedState {
            stream: stream.clone(),
            expected,
            actual,
        })
    }
}

/// Where an earlier append put an event id.
pub(crate) struct Placed {
    pub stream: String,
    pub revision: u64,
    pub position: Position,
}

/// Decides whether `events` replay an earlier append, given `lookup` (where each id already
/// is, if anywhere; its own failures come back as the outer error). `Ok(None)`: none of the
/// ids is known, append normally. `Ok(Some(_))`: every id is known, in this order,
/// contiguously, in this stream; answer with the original result and write nothing.
/// Anything in between is a `DuplicateEventId`.
pub(crate) fn replay<E>(
    stream: &StreamName,
    events: &[NewEvent],
    mut lookup: impl FnMut(Uuid) -> Result<Option<Placed>, E>,
) -> Result<Result<Option<AppendResult>, StoreError>, E> {
    let mut placements = Vec::with_capacity(events.len());
    for event in events {
        placements.push(lookup(event.id)?);
    }
    Ok(judge(stream, events, &placements))
}

fn judge(
    stream: &StreamName,
    events: &[NewEvent],
    placements: &[Option<Placed>],
) -> Result<Option<AppendResult>, StoreError> {
    let Some(first_known) = events
        .iter()
        .zip(placements)
        .find_map(|(e, p)| p.as_ref().map(|_| e.id))
    else {
        return Ok(None);
    };
    let Some(Some(first)) = placements.first() else {
        return Err(StoreError::DuplicateEventId { id: first_known });
    };
    let first_revision = first.revision;
    let mut last = None;
    for (offset, (event, placed)) in events.iter().zip(placements).enumerate() {
        let in_place = placed.as_ref().filter(|p| {
            p.stream == stream.as_str()
                && Some(p.revision) == first_revision.checked_add(offset as u64)
        });
        match in_place {
            Some(p) => last = Some(p),
            None => return Err(StoreError::DuplicateEventId { id: event.id }),
        }
    }
    Ok(last.map(|p| AppendResult {
        next_expected_revision: p.revision,
        position: p.position,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EventMetadata;
    use std::collections::HashMap;

    fn event(id: Uuid) -> NewEvent {
        NewEvent {
            id,
            event_type: "SessionRequested".into(),
            schema_version: 1,
            payload: b"{}".to_vec(),
            metadata: EventMetadata {
                actor: "system".into(),
                correlation_id: Uuid::nil(),
                causation_id: None,
            },
        }
    }

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).expect("valid name")
    }

    fn log(entries: &[(Uuid, &str, u64)]) -> HashMap<Uuid, (String, u64)> {
        entries
            .iter()
            .map(|(id, s, r)| (*id, (s.to_string(), *r)))
            .collect()
    }

    fn replay_against(
        log: &HashMap<Uuid, (String, u64)>,
        s: &str,
        ids: &[Uuid],
    ) -> Result<Option<AppendResult>, StoreError> {
        let events: Vec<_> = ids.iter().copied().map(event).collect();
        let found = replay(&stream(s), &events, |id| {
            Ok::<_, std::convert::Infallible>(log.get(&id).map(|(s, r)| Placed {
                stream: s.clone(),
                revision: *r,
                position: Position::new(r + 10, r + 10),
            }))
        });
        match found {
            Ok(verdict) => verdict,
            Err(never) => match never {},
        }
    }

    #[test]
    fn empty_batches_and_repeated_ids_are_invalid() {
        assert!(matches!(
            validate_batch(&[]),
            Err(StoreError::InvalidAppend(_))
        ));
        let id = Uuid::from_u128(1);
        assert!(matches!(
            validate_batch(&[event(id), event(Uuid::from_u128(2)), event(id)]),
            Err(StoreError::InvalidAppend(_))
        ));
        let many: Vec<_> = (0..40).map(|n| event(Uuid::from_u128(n % 39))).collect();
        assert!(validate_batch(&many).is_err());
        let distinct: Vec<_> = (0..40).map(|n| event(Uuid::from_u128(n))).collect();
        assert!(validate_batch(&distinct).is_ok());
    }

    #[test]
    fn unknown_ids_are_a_fresh_append() {
        let log = log(&[]);
        assert!(matches!(
            replay_against(&log, "s", &[Uuid::from_u128(1)]),
            Ok(None)
        ));
    }

    #[test]
    fn a_whole_batch_in_place_replays_its_original_result() {
        let [a, b] = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let log = log(&[(a, "s", 3), (b, "s", 4)]);
        let result = replay_against(&log, "s", &[a, b]).expect("a replay");
        assert_eq!(
            result,
            Some(AppendResult {
                next_expected_revision: 4,
                position: Position::new(14, 14)
            })
        );
    }

    #[test]
    fn partial_reordered_or_misplaced_batches_are_duplicates() {
        let [a, b, c] = [1, 2, 3].map(Uuid::from_u128);
        let log = log(&[(a, "s", 0), (b, "s", 1), (c, "s", 3)]);
        let duplicate_of = |s: &str, ids: &[Uuid]| match replay_against(&log, s, ids) {
            Err(StoreError::DuplicateEventId { id }) => Some(id),
            _ => None,
        };
        let new = Uuid::from_u128(9);
        assert_eq!(duplicate_of("s", &[a, new]), Some(new));
        assert_eq!(duplicate_of("s", &[new, a]), Some(a));
        assert_eq!(duplicate_of("s", &[b, a]), Some(a));
        assert_eq!(duplicate_of("s", &[b, c]), Some(c));
        assert_eq!(duplicate_of("other", &[a]), Some(a));
    }
}
