//! The AFL entry point: `certfleet-fuzz TARGET` runs the harness TARGET in
//! AFL's persistent mode. Built by `cargo afl build --features afl` (see
//! scripts/fuzz.sh); run outside AFL it reads one input from stdin.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(harness) = certfleet_fuzz::target(&name) else {
        let names: Vec<&str> = certfleet_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: certfleet-fuzz TARGET (one of: {})",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz(true, harness);
}
