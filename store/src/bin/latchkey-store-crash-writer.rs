//! The victim of the conformance suite's kill -9 case: appends forever from N concurrent
//! writers and prints `ACK <stream> <revision> <event-id>` for every event once its append
//! returned. It must never print an ACK before the store said the append succeeded.
//!
//! Usage: `latchkey-store-crash-writer --store URL --writers N`

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use latchkey_store::{
    open_url, EventMetadata, EventStore, ExpectedState, NewEvent, StoreError, StreamName,
};
use uuid::Uuid;

const USAGE: &str = "usage: latchkey-store-crash-writer --store URL --writers N";

struct Args {
    store: String,
    writers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut store = None;
    let mut writers = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--store" => store = Some(value),
            "--writers" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("--writers must be a positive number (got {value:?})")
                    })?;
                writers = Some(n);
            }
            _ => return Err(format!("unknown argument {flag:?}; {USAGE}")),
        }
    }
    Ok(Args {
        store: store.ok_or_else(|| format!("--store is required; {USAGE}"))?,
        writers: writers.unwrap_or(4),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let store = match open_url(&args.store).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("cannot open {}: {e}", args.store);
            return ExitCode::FAILURE;
        }
    };
    let run = Uuid::new_v4().simple().to_string();
    let shared = stream(&format!("crash-{run}-shared"));
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let store = Arc::clone(&store);
        let own: Vec<_> = (0..3)
            .map(|k| stream(&format!("crash-{run}-w{writer}-s{k}")))
            .collect();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            write_forever(&*store, own, shared).await
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Err(e)) => eprintln!("a writer failed: {e}"),
            Err(e) => eprintln!("a writer panicked: {e}"),
            Ok(Ok(())) => {}
        }
    }
    ExitCode::FAILURE
}

fn stream(name: &str) -> StreamName {
    // Built from a UUID and digits only, so always valid.
    StreamName::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Only returns on an error: it is meant to be killed.
async fn write_forever(
    store: &dyn EventStore,
    own: Vec<StreamName>,
    shared: StreamName,
) -> Result<(), StoreError> {
    let mut own_heads: Vec<Option<u64>> = vec![None; own.len()];
    let mut shared_head: Option<u64> = None;
    let mut out = String::new();
    for n in 0u64.. {
        let batch: Vec<NewEvent> = (0..if n % 4 == 3 { 3 } else { 1 })
            .map(|i| new_event(n, i))
            .collect();
        let (stream, result) = if n % 5 == 4 {
            // Contended: retry against the revision each conflict reports.
            loop {
                let expected = shared_head.map_or(ExpectedState::NoStream, ExpectedState::Exact);
                match store.append(&shared, expected, batch.clone()).await {
                    Err(StoreError::WrongExpectedState { actual, .. }) => shared_head = actual,
                    other => break (&shared, other?),
                }
            }
        } else {
            let k = n as usize % own.len();
            let expected = own_heads[k].map_or(ExpectedState::NoStream, ExpectedState::Exact);
            let result = store.append(&own[k], expected, batch.clone()).await?;
            own_heads[k] = Some(result.next_expected_revision);
            (&own[k], result)
        };
        if stream == &shared {
            shared_head = Some(result.next_expected_revision);
        }
        out.clear();
        let first = result.next_expected_revision + 1 - batch.len() as u64;
        for (offset, event) in batch.iter().enumerate() {
            out.push_str(&format!(
                "ACK {stream} {} {}\n",
                first + offset as u64,
                event.id
            ));
        }
        // One write per append keeps an append's lines together; a line the kill cuts short
        // has no newline and the suite ignores it.
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

fn new_event(n: u64, i: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "CrashTestAppended".into(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n},"i":{i},"note":"written to be killed"}}"#).into_bytes(),
        metadata: EventMetadata {
            actor: "system".into(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
        },
    }
}
