//! Fault injection for tests: named failpoints (the `fail` crate) at the
//! steps of issuing, storing, rolling out and installing a certificate,
//! armed from the environment variable [`ENV`] once at process start.
//!
//! `CERTFLEET_FAILPOINTS="name=action;name=action"`. An action is `abort`
//! (the process dies at that step as in a crash: `std::process::abort`, no
//! destructor, no flush, no journal cleanup) or any action of the `fail`
//! crate: `return` (the step fails with an error naming the failpoint),
//! `return(eio)` / `return(enospc)` / `return(erofs)` (at a file or store
//! write: that OS error), `1*return` (only the first time), `sleep(MS)`,
//! `panic`, `off`. The names are listed in docs/testing.md.
//!
//! Invariant: failpoints exist only in a build with the `failpoints` cargo
//! feature (which the end-to-end test build enables, and no release build
//! does). Without it `fail_point!` compiles to nothing, and a process that
//! finds [`ENV`] set refuses to start rather than silently run without the
//! faults a test asked for.

use std::io;

/// The environment variable read by [`setup`].
pub const ENV: &str = "CERTFLEET_FAILPOINTS";

/// The action that kills the process at the failpoint.
const ABORT: &str = "abort";

/// Whether this build has failpoints compiled in.
pub const fn enabled() -> bool {
    cfg!(feature = "failpoints")
}

/// Arm the failpoints named in [`ENV`]. Call once, at start, before any
/// work. Errors (a malformed setting, or failpoints asked of a build that
/// has none) name the variable and the fix.
pub fn setup() -> Result<(), String> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let value = value
        .into_string()
        .map_err(|_| format!("{ENV} is not valid UTF-8"))?;
    if value.trim().is_empty() {
        return Ok(());
    }
    if !enabled() {
        return Err(format!(
            "{ENV} is set but this build has no failpoints; build with \
             `--features certfleet-controller/failpoints,certfleet-agent/failpoints` \
             (scripts/test.sh does) or unset {ENV}"
        ));
    }
    for item in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .map(|(n, a)| (n.trim(), a.trim()))
            .filter(|(n, a)| !n.is_empty() && !a.is_empty())
            .ok_or_else(|| format!("{ENV}: {item:?} is not NAME=ACTION"))?;
        if action == ABORT {
            let owned = name.to_string();
            fail::cfg_callback(name, move || {
                eprintln!("failpoint {owned}: aborting the process");
                std::process::abort();
            })
        } else {
            fail::cfg(name, action)
        }
        .map_err(|e| format!("{ENV}: failpoint {name}: {e}"))?;
        tracing::warn!(failpoint = name, action, "failpoint armed");
    }
    Ok(())
}

/// The error a `return` action makes at a failpoint: the OS error its
/// argument names (`eio`, `enospc`, `erofs`), else a plain error naming the
/// failpoint.
pub fn io_error(name: &str, arg: Option<String>) -> io::Error {
    let errno = match arg.as_deref() {
        Some("eio") => Some(nix::errno::Errno::EIO),
        Some("enospc") => Some(nix::errno::Errno::ENOSPC),
        Some("erofs") => Some(nix::errno::Errno::EROFS),
        _ => None,
    };
    match errno {
        Some(e) => io::Error::from(e),
        None => io::Error::other(format!("failpoint {name}")),
    }
}

/// Evaluate failpoint `name` at a step that can fail: `Some(message)` when
/// a `return` action fired (the caller fails the step with it), `None`
/// otherwise (including after an action such as `sleep`). An `abort` action
/// does not return.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn check(name: &str) -> Option<String> {
    fail::fail_point!(name, |arg| Some(message(name, arg)));
    None
}

/// [`check`] at a write: the OS error a `return(eio)`-style action names.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn check_io(name: &str) -> io::Result<()> {
    fail::fail_point!(name, |arg| Err(io_error(name, arg)));
    Ok(())
}

/// The message of a step failed by a `return` action.
pub fn message(name: &str, arg: Option<String>) -> String {
    match arg {
        Some(arg) if !arg.is_empty() => format!("failpoint {name}: {arg}"),
        _ => format!("failpoint {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_arguments_name_os_errors() {
        assert_eq!(io_error("x", Some("eio".into())).raw_os_error(), Some(5));
        assert_eq!(
            io_error("x", Some("enospc".into())).raw_os_error(),
            Some(28)
        );
        let plain = io_error("store.sync", None);
        assert_eq!(plain.raw_os_error(), None);
        assert!(plain.to_string().contains("store.sync"), "{plain}");
        assert_eq!(message("a.b", None), "failpoint a.b");
    }
}
