//! `statuslens demo` runs for a bounded time and flags the 401, 429 and 5xx episodes.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// All a piped stream of a finished child says.
fn text(pipe: Option<impl Read>) -> String {
    let mut out = String::new();
    pipe.unwrap().read_to_string(&mut out).unwrap();
    out
}

/// Starts `statuslens demo` on free ports with `args`, its output piped.
fn demo(args: &[&str]) -> std::process::Child {
    Command::new(common::bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn demo_flags_401_429_and_5xx_episodes() {
    let mut child = demo(&["--phase", "4s", "--cycles", "1"]);
    // One cycle is 10 phases (40 s); allow a slow box plenty more.
    let status = common::exit_within(&mut child, Duration::from_secs(240), "the demo");
    let (out, err) = (text(child.stdout.take()), text(child.stderr.take()));
    assert!(status.success(), "{out}\n{err}");
    assert!(
        out.contains("/metrics") && out.contains("/api/spikes"),
        "{out}"
    );
    for (signal, code) in [
        ("unauthorized", "401 Unauthorized"),
        ("rate_limited", "429 Too Many Requests"),
        ("server_error", "5"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains("SPIKE") && l.contains(&format!("signal {signal}:")))
            .unwrap_or_else(|| panic!("no {signal} spike narrated:\n{out}"));
        assert!(line.contains(&format!("— {code}")), "{line}");
    }
    // Spikes are narrated in story order: 401s, then 429s, then 5xx.
    let pos = |s: &str| out.find(&format!("signal {s}:")).unwrap();
    assert!(
        pos("unauthorized") < pos("rate_limited") && pos("rate_limited") < pos("server_error"),
        "{out}"
    );
}

#[test]
fn demo_piped_into_a_reader_that_leaves_ends_cleanly() {
    // `statuslens demo | head -3`: once the reader is gone the story ends, with exit 0,
    // instead of a panic on the closed pipe (exit 101) or running on unseen.
    let mut child = demo(&["--phase", "1s"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"statuslens demo\n");
    drop(stdout);
    let status = common::exit_within(
        &mut child,
        Duration::from_secs(120),
        "the demo with nobody reading",
    );
    let err = text(child.stderr.take());
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
