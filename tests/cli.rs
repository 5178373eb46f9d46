//! The command line: check, explain, and bad input.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_known_unknown_and_invalid() {
    let (code, out, _) = run(&["explain", "429"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("429 Too Many Requests"), "{out}");
    assert!(out.contains("Retry-After"), "{out}");
    let (code, out, _) = run(&["explain", "599"]);
    assert_eq!(code, 0);
    assert!(out.contains("5xx"), "{out}");
    for bad in ["abc", "42", "600", "1000"] {
        let (code, _, err) = run(&["explain", bad]);
        assert_eq!(code, 2, "{bad}");
        assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
    }
}

#[test]
fn check_prints_the_route_table() {
    let (code, out, err) = run(&["check", "--config", "config/statuslens.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ROUTE"), "{out}");
    assert!(out.contains("crm"), "{out}");
    assert!(!out.contains("trusted"), "none listed: {out}");
    assert!(!out.contains("PROXY protocol"), "off: {out}");
    // Trusted load balancers, as statuslens reads them.
    let cfg = common::write_config(
        "[proxy]\nlisten = \"127.0.0.1:8080\"\nproxy_protocol = true\n\
         trusted_proxies = [\"10.0.0.0/8\", \"::ffff:192.0.2.0/120\", \"2001:db8::7\"]\n\n\
         [[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\ntrusted 10.0.0.0/8, 192.0.2.0/24, 2001:db8::7/128\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "\nproxy  127.0.0.1:8080  (every connection begins with a PROXY protocol header)\n"
        ),
        "{out}"
    );
}

#[test]
fn bad_config_names_the_field_and_exits_2() {
    let path = common::write_config(
        "[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\ntimeout = \"soon\"\n",
    );
    for cmd in ["check", "run"] {
        let (code, _, err) = run(&[cmd, "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("routes[0].timeout") && err.contains("soon"),
            "{cmd}: {err}"
        );
    }
    let path = common::write_config(
        "[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\ntypo = 1\n",
    );
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("routes[0]") && err.contains("typo"), "{err}");
    let (code, _, err) = run(&["check", "--config", "/nonexistent/x.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
    // The TLS file at fault is named by its field, its path once.
    let path = common::write_config(
        "[proxy]\ntls = { cert_file = \"/nonexistent/c.pem\", key_file = \"/nonexistent/k.pem\" }\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("proxy.tls.cert_file"), "{err}");
    assert_eq!(err.matches("/nonexistent/c.pem").count(), 1, "{err}");
}

#[test]
fn bad_flags_exit_2_and_start_nothing() {
    for args in [
        &["run", "--upstream", "ftp://x"][..],
        &[
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            "nope",
        ],
        &[
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--log-format",
            "xml",
        ],
        &[
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream-timeout",
            "fast",
        ],
        &["run", "--upstream", "http://127.0.0.1:1", "--workers", "0"],
        &[
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--workers",
            "many",
        ],
        &["run"],
        &["demo", "--cycles", "0"],
        &["frobnicate"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!out.contains("listening"), "{args:?} started: {out}");
        assert!(!err.is_empty());
    }
    // A flag's fault is the flag's, not the config file's, when both are given.
    let file =
        common::write_config("[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n");
    let file = file.to_str().unwrap();
    for (flag, value) in [
        ("--upstream-timeout", "0s"),
        ("--workers", "0"),
        ("--admin", "127.0.0.1:18999"),
    ] {
        let (code, _, err) = run(&[
            "run",
            "--config",
            file,
            "--listen",
            "127.0.0.1:18999",
            flag,
            value,
        ]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(&format!("flags: {flag}")), "{flag}: {err}");
    }
}

#[test]
fn the_design_contract_example_config_is_accepted() {
    // The normative example of DESIGN.md, an https upstream included.
    let path = common::write_config(
        r#"
[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9464"

[[routes]]
name = "crm"
match = { path_prefix = "/services/data/" }
upstream = "https://api.example.com"
timeout = "30s"

[[routes]]
name = "default"
match = { path_prefix = "/" }
upstream = "http://127.0.0.1:3000"
"#,
    );
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https://api.example.com"), "{out}");
}

#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    // `statuslens check big.toml | head -1`: a table larger than the pipe's buffer, whose
    // reader is gone after the first line.
    let routes: String = (0..3000)
        .map(|i| {
            format!("[[routes]]\nname = \"r{i}\"\nmatch = {{ path_prefix = \"/r{i}/\" }}\nupstream = \"http://127.0.0.1:1\"\n\n")
        })
        .collect();
    let cfg = common::write_config(&routes);
    let mut child = Command::new(common::bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_proxy_port_in_use_is_refused_even_by_another_statuslens() {
    // The workers bind with SO_REUSEPORT: without a check, a second instance (a stale
    // one, a double start) joined the first one's port and took part of its traffic.
    let first = common::Proc::start(&["--upstream", "http://127.0.0.1:9"]);
    let taken = first.proxy.to_string();
    let mut second = std::process::Command::new(common::bin())
        .args([
            "run",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            &taken,
        ])
        .args(["--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > common::DEADLINE {
            let _ = second.kill();
            panic!("a second statuslens started on {taken}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&taken), "{err}");
}

#[test]
fn relative_paths_are_relative_to_the_config_files_directory() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let config = common::write_config("");
    let dir = config.parent().unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("tls/key.pem"), made.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("token"), "0123456789abcdef0123\n").unwrap();
    let text = |ca: &str| {
        format!(
            "[proxy]\ntls = {{ cert_file = \"tls/cert.pem\", key_file = \"tls/key.pem\" }}\n\n[admin]\ntoken_file = \"token\"\n\n[[routes]]\nname = \"a\"\nupstream = \"https://127.0.0.1:1\"\nca_file = \"{ca}\"\n"
        )
    };
    // Read from another working directory, as a service manager would start it.
    let check_from = |cwd: &std::path::Path, config: &std::path::Path| {
        let out = Command::new(common::bin())
            .args(["check", "--config", config.to_str().unwrap()])
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = || check_from(std::path::Path::new("/"), &config);
    std::fs::write(&config, text("tls/cert.pem")).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{err}");
    // And from its own directory, named bare (its parent is then "").
    let bare = std::path::Path::new(config.file_name().unwrap());
    let (code, _, err) = check_from(dir, bare);
    assert_eq!(code, Some(0), "{err}");
    // rcgen's certificates run to 4096-01-01.
    let cert = dir.join("tls/cert.pem");
    let line = format!(
        "tls    {}  expires 4096-01-01T00:00:00Z (in ",
        cert.display()
    );
    assert!(out.contains(&line), "{out}");
    // An expired one still checks (clients decide, as with nginx), and says so.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    std::fs::write(&cert, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("tls/key.pem"), key.serialize_pem()).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{err}");
    let line = format!(
        "tls    {}  expires 2020-01-01T00:00:00Z (EXPIRED ",
        cert.display()
    );
    assert!(out.contains(&line) && out.contains(" days ago)"), "{out}");
    // A relative path that is not there is named as it was looked for.
    std::fs::write(&config, text("tls/gone.pem")).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, Some(2), "{err}");
    let looked_for = dir.join("tls/gone.pem");
    assert!(
        err.contains("routes[0].ca_file") && err.contains(looked_for.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn pretty_lines_into_a_pipe_carry_no_colour_codes() {
    // A file or a pipe (docker's log driver) would keep the escape codes as text.
    use std::io::{BufRead, BufReader};
    let mut child = common::Killed(
        Command::new(common::bin())
            .args([
                "run",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-format",
                "pretty",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let done = line.contains("listening");
            let _ = tx.send(line);
            if done {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(common::DEADLINE) {
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("listening")),
        "no start-up line: {seen:?}"
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    }
}
