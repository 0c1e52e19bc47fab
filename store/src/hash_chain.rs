//! The per-stream hash chain that lets an auditor prove no event was altered, removed or
//! reordered. Every backend links events with this one function, so a log moved between
//! backends still verifies. It must never hash the global position, which some backends
//! (KurrentDB) only learn after the write.
//!
//! The hashed bytes are a stable, documented format so that tools in other languages can
//! recompute a link: SHA-256 over, in order,
//!
//! | field | encoding |
//! |---|---|
//! | domain tag | the 17 ASCII bytes `latchkey.event.v1`, then `0x00` |
//! | previous hash | `0x00` for revision 0, else `0x01` and the 32 bytes |
//! | stream | u64 big-endian byte length, then the UTF-8 bytes |
//! | revision | u64 big-endian |
//! | event id | the 16 bytes of the UUID |
//! | event type | u64 big-endian byte length, then the UTF-8 bytes |
//! | schema version | u32 big-endian |
//! | payload | u64 big-endian byte length, then the bytes |
//! | actor | u64 big-endian byte length, then the UTF-8 bytes |
//! | correlation id | the 16 bytes of the UUID |
//! | causation id | `0x00` if absent, else `0x01` and the 16 bytes |
//! | recorded at | i64 big-endian microseconds since the Unix epoch |

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api::{EventMetadata, Hash, RecordedEvent, StreamName};

const DOMAIN_TAG: &[u8] = b"latchkey.event.v1\0";

/// Everything a link covers: the event as appended plus where the store put it in its
/// stream and when. Borrowed, so hashing allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct LinkFields<'a> {
    pub stream: &'a StreamName,
    pub revision: u64,
    pub id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub payload: &'a [u8],
    pub metadata: &'a EventMetadata,
    /// Hashed at microsecond precision; finer digits are ignored.
    pub recorded_at: DateTime<Utc>,
}

impl<'a> LinkFields<'a> {
    pub fn of(event: &'a RecordedEvent) -> Self {
        Self {
            stream: &event.stream,
            revision: event.revision,
            id: event.id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at: event.recorded_at,
        }
    }
}

/// The hash of an event whose stream predecessor has hash `prev` (`None` for revision 0).
pub fn link(prev: Option<&Hash>, e: &LinkFields<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    match prev {
        None => h.update([0u8]),
        Some(prev) => {
            h.update([1u8]);
            h.update(prev.0);
        }
    }
    update_bytes(&mut h, e.stream.as_str().as_bytes());
    h.update(e.revision.to_be_bytes());
    h.update(e.id.as_bytes());
    update_bytes(&mut h, e.event_type.as_bytes());
    h.update(e.schema_version.to_be_bytes());
    update_bytes(&mut h, e.payload);
    update_bytes(&mut h, e.metadata.actor.as_bytes());
    h.update(e.metadata.correlation_id.as_bytes());
    match &e.metadata.causation_id {
        None => h.update([0u8]),
        Some(causation) => {
            h.update([1u8]);
            h.update(causation.as_bytes());
        }
    }
    h.update(e.recorded_at.timestamp_micros().to_be_bytes());
    Hash(h.finalize().into())
}

/// Length-prefixing makes the encoding unambiguous: no two different field lists can
/// produce the same byte string.
fn update_bytes(h: &mut Sha256, bytes: &[u8]) {
    // usize always fits in u64 on the platforms we build for.
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// `t` cut to whole microseconds, the precision every backend stores, so an event rehashes
/// identically after a round trip through storage.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Why a stream's events do not form an intact chain; each case names the first bad
/// revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "revision {revision} is out of place: expected revision {expected} (revisions must run \
         0, 1, 2, … without gaps)"
    )]
    RevisionGap { revision: u64, expected: u64 },
    #[error("revision {revision} belongs to stream {found}, not to {expected}")]
    WrongStream {
        revision: u64,
        expected: StreamName,
        found: StreamName,
    },
    #[error("revision {revision} does not link to the hash of the event before it")]
    BrokenLink { revision: u64 },
    #[error("revision {revision} does not match its stored hash: the event was altered")]
    HashMismatch { revision: u64 },
}

impl ChainError {
    /// The first revision at which the chain breaks.
    pub fn revision(&self) -> u64 {
        match self {
            Self::RevisionGap { revision, .. }
            | Self::WrongStream { revision, .. }
            | Self::BrokenLink { revision }
            | Self::HashMismatch { revision } => *revision,
        }
    }
}

/// Checks a whole stream, read from revision 0: revisions contiguous from 0, every
/// `prev_hash` equal to the previous event's hash, and every hash recomputing.
pub fn verify_stream(events: &[RecordedEvent]) -> Result<(), ChainError> {
    verify_after(None, events)
}

/// Checks that `events` continue the chain after `previous` (`None`: they start the stream
/// at revision 0), so a long stream can be verified page by page.
pub fn verify_after(
    previous: Option<&RecordedEvent>,
    events: &[RecordedEvent],
) -> Result<(), ChainError> {
    let mut prev_hash = previous.map(|p| p.hash);
    let first = previous.map_or(0, |p| p.revision.saturating_add(1));
    let stream = previous.or(events.first()).map(|e| &e.stream);
    for (offset, event) in events.iter().enumerate() {
        let expected = first.saturating_add(offset as u64);
        if let Some(stream) = stream {
            if &event.stream != stream {
                return Err(ChainError::WrongStream {
                    revision: event.revision,
                    expected: stream.clone(),
                    found: event.stream.clone(),
                });
            }
        }
        if event.revision != expected {
            return Err(ChainError::RevisionGap {
                revision: event.revision,
                expected,
            });
        }
        if event.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink {
                revision: event.revision,
            });
        }
        if link(prev_hash.as_ref(), &LinkFields::of(event)) != event.hash {
            return Err(ChainError::HashMismatch {
                revision: event.revision,
            });
        }
        prev_hash = Some(event.hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Position;

    fn chain(len: u64) -> Vec<RecordedEvent> {
        let stream = StreamName::new("computer-1").expect("valid name");
        let recorded_at = truncate_to_micros(Utc::now());
        let mut events: Vec<RecordedEvent> = Vec::new();
        for revision in 0..len {
            let prev_hash = events.last().map(|e| e.hash);
            let mut event = RecordedEvent {
                id: Uuid::new_v4(),
                stream: stream.clone(),
                revision,
                position: Position::new(revision + 1, revision + 1),
                event_type: "PasswordRotated".into(),
                schema_version: 1,
                payload: format!("{{\"n\":{revision}}}").into_bytes(),
                metadata: EventMetadata {
                    actor: "system".into(),
                    correlation_id: Uuid::new_v4(),
                    causation_id: (revision % 2 == 1).then(Uuid::new_v4),
                },
                recorded_at,
                prev_hash,
                hash: Hash([0; 32]),
            };
            event.hash = link(prev_hash.as_ref(), &LinkFields::of(&event));
            events.push(event);
        }
        events
    }

    #[test]
    fn an_untouched_chain_verifies_whole_and_page_by_page() {
        let events = chain(5);
        assert_eq!(verify_stream(&events), Ok(()));
        assert_eq!(verify_after(Some(&events[1]), &events[2..]), Ok(()));
        assert_eq!(verify_stream(&[]), Ok(()));
    }

    #[test]
    fn the_position_is_not_hashed() {
        let mut events = chain(2);
        events[1].position = Position::new(99, 42);
        assert_eq!(verify_stream(&events), Ok(()));
    }

    #[test]
    fn altering_any_hashed_field_is_detected_at_that_revision() {
        let alterations: Vec<fn(&mut RecordedEvent)> = vec![
            |e| e.payload.push(b' '),
            |e| e.event_type.push('X'),
            |e| e.schema_version += 1,
            |e| e.id = Uuid::new_v4(),
            |e| e.metadata.actor.push('!'),
            |e| e.metadata.correlation_id = Uuid::new_v4(),
            |e| e.metadata.causation_id = Some(Uuid::new_v4()),
            |e| e.recorded_at += chrono::Duration::microseconds(1),
        ];
        for alter in alterations {
            let mut events = chain(4);
            alter(&mut events[2]);
            assert_eq!(
                verify_stream(&events),
                Err(ChainError::HashMismatch { revision: 2 })
            );
        }
    }

    #[test]
    fn removing_reordering_or_relinking_events_is_detected() {
        let mut removed = chain(4);
        removed.remove(1);
        assert_eq!(verify_stream(&removed).map_err(|e| e.revision()), Err(2));

        let mut swapped = chain(4);
        swapped.swap(1, 2);
        assert_eq!(verify_stream(&swapped).map_err(|e| e.revision()), Err(2));

        let mut relinked = chain(4);
        relinked[3].prev_hash = Some(Hash([7; 32]));
        assert_eq!(
            verify_stream(&relinked),
            Err(ChainError::BrokenLink { revision: 3 })
        );

        let mut not_from_zero = chain(3);
        not_from_zero.remove(0);
        assert_eq!(
            verify_stream(&not_from_zero),
            Err(ChainError::RevisionGap {
                revision: 1,
                expected: 0
            })
        );
    }

    #[test]
    fn events_of_another_stream_are_detected() {
        let mut events = chain(3);
        events[1].stream = StreamName::new("computer-2").expect("valid name");
        assert!(matches!(
            verify_stream(&events),
            Err(ChainError::WrongStream { revision: 1, .. })
        ));
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_unambiguous() {
        let events = chain(1);
        let mut shifted = events[0].clone();
        // Moving a byte from the event type into the payload must change the hash.
        shifted.event_type = "PasswordRotate".into();
        shifted.payload.insert(0, b'd');
        assert_ne!(
            link(None, &LinkFields::of(&shifted)),
            link(None, &LinkFields::of(&events[0]))
        );
    }

    #[test]
    fn sub_microsecond_digits_do_not_change_the_hash() {
        let events = chain(1);
        let mut finer = events[0].clone();
        finer.recorded_at += chrono::Duration::nanoseconds(999);
        assert_eq!(
            link(None, &LinkFields::of(&finer)),
            link(None, &LinkFields::of(&events[0]))
        );
        assert_eq!(truncate_to_micros(finer.recorded_at), events[0].recorded_at);
    }

    #[test]
    fn the_link_format_is_stable() {
        // Pins the documented byte format: changing it would break every stored chain.
        let stream = StreamName::new("s").expect("valid name");
        let metadata = EventMetadata {
            actor: "a".into(),
            correlation_id: Uuid::nil(),
            causation_id: None,
        };
        let fields = LinkFields {
            stream: &stream,
            revision: 0,
            id: Uuid::nil(),
            event_type: "T",
            schema_version: 1,
            payload: b"{}",
            metadata: &metadata,
            recorded_at: DateTime::from_timestamp_micros(0).expect("epoch"),
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"latchkey.event.v1\0");
        bytes.push(0);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(b"s");
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(b"T");
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&2u64.to_be_bytes());
        bytes.extend_from_slice(b"{}");
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(b"a");
        bytes.extend_from_slice(&[0; 16]);
        bytes.push(0);
        bytes.extend_from_slice(&0i64.to_be_bytes());
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(link(None, &fields), Hash(expected));
    }
}
