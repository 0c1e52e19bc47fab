//! Regenerates `schemas/events/` from the domain types: `cargo run -p latchkey-schemas`.

fn main() -> std::process::ExitCode {
    match latchkey_schemas::write_all() {
        Ok(n) => {
            println!(
                "wrote {n} event schemas to {}",
                latchkey_schemas::events_dir().display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("could not write the schemas: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
