//! HTTPS end to end with certificates generated in the test (openssl) and
//! checked by an independent client (curl), including a SIGHUP reload.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// A self-signed certificate for 127.0.0.1, written to `cert` and `key`.
fn generate(dir: &Path, name: &str) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// `curl` with `ca` as the only trust anchor: (HTTP status, body), or
/// `None` when the TLS connection fails.
async fn curl(ca: &Path, url: &str) -> Option<(u16, String)> {
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "5",
            "--write-out",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_string()))
}

#[tokio::test]
async fn https_with_certificates_reloaded_on_sighup() {
    let certs = tempfile::tempdir().unwrap();
    generate(certs.path(), "first");
    generate(certs.path(), "second");
    let cert = certs.path().join("live.pem");
    let key = certs.path().join("live.key");
    std::fs::copy(certs.path().join("first.pem"), &cert).unwrap();
    std::fs::copy(certs.path().join("first.key"), &key).unwrap();

    let agent = Agent::start(AgentOptions {
        env: vec![(
            "TURN_AGENT_API_TLS".into(),
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                cert.display(),
                key.display()
            ),
        )],
        ..AgentOptions::default()
    });
    let url = format!("https://{}/turncredential", agent.files.api);
    let first_ca = certs.path().join("first.pem");
    let second_ca = certs.path().join("second.pem");
    let body = wait_for(
        Duration::from_secs(10),
        "a credential over HTTPS",
        || async {
            match curl(&first_ca, &url).await {
                Some((200, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await;
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["code"], "ok");
    assert!(
        agent.get("/turncredential").await.is_none(),
        "plain HTTP must not be answered"
    );
    assert!(
        curl(&second_ca, &url).await.is_none(),
        "an untrusted certificate was accepted"
    );

    std::fs::copy(certs.path().join("second.pem"), &cert).unwrap();
    std::fs::copy(certs.path().join("second.key"), &key).unwrap();
    agent.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the new certificate", || async {
        curl(&second_ca, &url)
            .await
            .filter(|(code, _)| *code == 200)
            .map(|_| ())
    })
    .await;
    assert!(
        curl(&first_ca, &url).await.is_none(),
        "the old certificate is still served"
    );
}

#[test]
fn unusable_tls_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\ntls = {{ cert = \"{b}\", key = \"{b}\" }}\n[turnserver]\nrealm = \"r\"\nuserdb = \"{d}/db\"\npidfile = \"{d}/pid\"\n\
             [credentials]\nstate_file = \"{d}/state.json\"\n",
            b = bogus.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_agent_cli(
        &["check-config", "--config", &config.display().to_string()],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.lines().any(|line| line.starts_with("api.tls: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_fifo_as_the_certificate_fails_the_reload_and_sigterm_still_stops_the_agent() {
    let certs = tempfile::tempdir().unwrap();
    generate(certs.path(), "first");
    let cert = certs.path().join("live.pem");
    let key = certs.path().join("first.key");
    std::fs::copy(certs.path().join("first.pem"), &cert).unwrap();
    let mut agent = Agent::start(AgentOptions {
        env: vec![(
            "TURN_AGENT_API_TLS".into(),
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                cert.display(),
                key.display()
            ),
        )],
        ..AgentOptions::default()
    });
    let url = format!("https://{}/readyz", agent.files.api);
    let ca = certs.path().join("first.pem");
    wait_for(Duration::from_secs(10), "HTTPS answers", || async {
        curl(&ca, &url).await.map(|_| ())
    })
    .await;

    // A FIFO nobody writes to: opening it for reading blocks forever.
    std::fs::remove_file(&cert).unwrap();
    nix::unistd::mkfifo(&cert, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    agent.signal(Signal::SIGHUP);
    agent
        .wait_log(
            "keeping the previous TLS certificates",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        agent
            .log()
            .contains("live.pem is a FIFO, not a regular file"),
        "{}",
        agent.log()
    );
    // The old certificate is still served.
    assert!(curl(&ca, &url).await.is_some());

    let stop_sent = std::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(10)).await;
    eprintln!(
        "SIGTERM to exit after a FIFO reload: {:?}",
        stop_sent.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}
