//! The control channel against a real turnserver: the CLI password only in
//! a 0600 file, sessions held by turnutils_uclient listed by `/sessions`,
//! counted in the znode and the metrics, and ended by `DELETE`; request
//! input that could become a CLI command is refused; `--no-cli` turns the
//! channel off with a warning.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;

async fn control_status(agent: &Agent) -> Option<serde_json::Value> {
    let (200, body) = agent.get("/status").await? else {
        return None;
    };
    Some(body["control"].clone())
}

/// Waits until the control channel has answered a poll.
async fn wait_control_up(agent: &Agent) -> serde_json::Value {
    wait_for(
        Duration::from_secs(15),
        "the control channel up",
        || async {
            let control = control_status(agent).await?;
            (control["up"] == true).then_some(control)
        },
    )
    .await
}

async fn delete(agent: &Agent, path: &str) -> (u16, serde_json::Value) {
    let response = http_client().delete(agent.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_cli_password_is_only_in_a_0600_file_and_never_logged() {
    let agent = Agent::start(AgentOptions::default());
    let pid = agent.wait_ready(Duration::from_secs(10)).await;
    let control = wait_control_up(&agent).await;
    assert_eq!(control["pid"], pid);
    assert_eq!(control["allocations"], 0);

    let file = agent.files.path("turnserver-agent.conf");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let password = text
        .lines()
        .find_map(|line| line.strip_prefix("cli-password="))
        .expect("a cli-password line");
    assert!(password.len() >= 20, "{password:?}");
    assert!(text.contains("cli-ip=127.0.0.1\n"));

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(password), "{cmdline}");
    assert!(!cmdline.contains("cli-"), "{cmdline}");
    assert!(cmdline.contains(&file.display().to_string()), "{cmdline}");
    let agent_cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&agent_cmdline).contains(password));
    // The status and the log carry no trace of it either.
    assert!(!control.to_string().contains(password));
    assert!(!agent.log().contains(password), "{}", agent.log());

    // A new turnserver gets a new password.
    signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
    let new_pid = wait_for(Duration::from_secs(15), "a new turnserver", || async {
        let control = wait_control_up(&agent).await;
        control["pid"].as_u64().filter(|p| *p != u64::from(pid))
    })
    .await;
    assert_ne!(new_pid, u64::from(pid));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&format!("cli-password={password}\n")));
    assert!(!agent.log().contains(password));

    // A clean stop leaves no password on disk.
    let mut agent = agent;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = agent.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{}", agent.log());
    assert!(!file.exists(), "{}", file.display());
}

#[tokio::test]
async fn sessions_are_listed_counted_published_and_ended() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"control\"\npublish_interval = \"200ms\"\n\
             [traffic]\ninterface = \"lo\"\n",
            zookeeper.connect_string()
        ),
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        ..AgentOptions::default()
    });
    let reader = Reader::connect(&zookeeper).await;
    let pid = agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let served = agent.wait_credential(Duration::from_secs(10)).await;
    wait_for(
        Duration::from_secs(10),
        "allocations 0 in the znode",
        || async {
            let (payload, _) = reader.node("/turn/servers/control").await?;
            (payload["allocations"] == 0).then_some(())
        },
    )
    .await;

    let _uclient = hold_allocations(agent.files.turn_port, &served.userid, &served.password);
    let listed = wait_for(Duration::from_secs(15), "the sessions listed", || async {
        let (200, body) = agent.get("/sessions").await? else {
            return None;
        };
        (body["total"].as_u64()? > 0).then_some(body)
    })
    .await;
    let sessions = listed["sessions"].as_array().unwrap();
    for session in sessions {
        assert_eq!(session["user"], served.userid.as_str(), "{session}");
        assert_eq!(session["transport"], "udp", "{session}");
        assert_eq!(session["realm"], agent.files.realm.as_str(), "{session}");
        assert!(session["id"]
            .as_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()));
        assert!(session["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let (_, by_user) = agent
        .get(&format!("/sessions?user={}", served.userid))
        .await
        .unwrap();
    assert!(by_user["total"].as_u64().unwrap() > 0);
    let (_, nobody) = agent.get("/sessions?user=nobody").await.unwrap();
    assert_eq!(nobody["total"], 0);

    wait_for(Duration::from_secs(10), "allocations counted", || async {
        let (payload, _) = reader.node("/turn/servers/control").await?;
        let metrics = agent.metrics().await;
        let counted = metrics.lines().any(|line| {
            line.starts_with("turn_agent_turnserver_allocations ") && !line.ends_with(" 0")
        });
        let polls_timed = metrics.lines().any(|line| {
            line.starts_with("turn_agent_control_polls_total ") && !line.ends_with(" 0")
        }) && metrics.lines().any(|line| {
            line.strip_prefix("turn_agent_control_poll_seconds ")
                .and_then(|value| value.parse::<f64>().ok())
                .is_some_and(|seconds| seconds > 0.0 && seconds < 5.0)
        });
        (payload["allocations"].as_u64()? > 0 && counted && polls_timed).then_some(())
    })
    .await;

    // Input that could become a CLI command never reaches it.
    for path in [
        "/sessions/abc",
        "/sessions/1%0D%0Ahalt",
        "/sessions/-1",
        "/sessions/123456789012345678901",
    ] {
        let (status, body) = delete(&agent, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], "bad_request", "{path}: {body}");
    }
    for query in [
        "?user=a%20halt",
        "?user=a%0D%0Ahalt",
        "?user=a%0Ahalt",
        "?user=",
    ] {
        let (status, body) = agent.get(&format!("/sessions{query}")).await.unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        let (status, _) = delete(&agent, &format!("/sessions{query}")).await;
        assert_eq!(status, 400, "{query}");
    }
    let (status, body) = delete(&agent, "/sessions/999999999").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = delete(&agent, "/sessions?user=halt").await;
    assert_eq!((status, &body["terminated"]), (200, &serde_json::json!(0)));
    // The same turnserver still runs.
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);

    // `turn-agent sessions` prints the same as a table, and `sessions kill`
    // ends one.
    let config = agent.files.config_path.display().to_string();
    let (code, table, stderr) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run_agent_cli(&["sessions", "--config", &config], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let first = sessions[0]["id"].as_str().unwrap().to_string();
    assert!(
        table.contains(&first) && table.contains(&served.userid),
        "{table}"
    );
    let (code, _, stderr) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run_agent_cli(&["sessions", "--config", &config, "kill"], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let first = first.clone();
        move || run_agent_cli(&["sessions", "--config", &config, "kill", &first], &[])
    })
    .await
    .unwrap();
    assert_eq!((code, stdout.trim()), (0, "terminated: 1"), "{stderr}");
    let (status, body) = delete(&agent, &format!("/sessions?user={}", served.userid)).await;
    assert_eq!(status, 200, "{body}");
    wait_for(Duration::from_secs(10), "allocations back to 0", || async {
        let control = control_status(&agent).await?;
        let (payload, _) = reader.node("/turn/servers/control").await?;
        (control["allocations"] == 0 && payload["allocations"] == 0).then_some(())
    })
    .await;
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
}

#[tokio::test]
async fn no_cli_in_extra_args_turns_the_control_channel_off_with_a_warning() {
    let mut options = AgentOptions::default();
    options.extra_args.push("--no-cli".into());
    let agent = Agent::start(options);
    agent.wait_ready(Duration::from_secs(10)).await;
    agent
        .wait_log(
            "set turnserver.control = \"off\" instead",
            Duration::from_secs(5),
        )
        .await;
    assert_control_off(&agent).await;
    // A revoke could not end sessions: refused, nothing rotated.
    let served = agent.wait_credential(Duration::from_secs(10)).await;
    let (status, body) = post(&agent, "/rotate?revoke=true").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("nothing was rotated"),
        "{body}"
    );
    assert_eq!(agent.credential("").await.unwrap().userid, served.userid);
}

#[tokio::test]
async fn a_drain_waits_for_open_allocations_and_ends_when_they_are_ended() {
    let mut agent = Agent::start(AgentOptions {
        extra: "[drain]\nidle_mbps = 100000.0\nquiet_period = \"100ms\"\ntimeout = \"60s\"\n"
            .into(),
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(10)).await;
    let served = agent.wait_credential(Duration::from_secs(10)).await;
    let _uclient = hold_allocations(agent.files.turn_port, &served.userid, &served.password);
    wait_for(Duration::from_secs(15), "allocations open", || async {
        let control = control_status(&agent).await?;
        (control["allocations"].as_u64()? > 0).then_some(())
    })
    .await;

    let response = http_client()
        .post(agent.url("/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    wait_for(Duration::from_secs(5), "draining", || async {
        let (status, body) = agent.get("/readyz").await?;
        (status == 503 && body["reason"] == "draining").then_some(())
    })
    .await;
    // Traffic counts as idle (idle_mbps is huge and the quiet period
    // short), so only the open allocations keep the agent up: give it a
    // window in which a traffic-based drain would have ended.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(agent.child_alive(), "{}", agent.log());

    let (status, body) = delete(&agent, &format!("/sessions?user={}", served.userid)).await;
    assert_eq!(status, 200, "{body}");
    let exit = agent.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{}", agent.log());
    assert!(agent
        .log()
        .contains("drained: coturn reports no allocations"));
}

#[tokio::test]
async fn a_frozen_cli_means_fallback_to_interface_counters_and_recovery() {
    let agent = Agent::start(AgentOptions {
        // Probes may fail for a while without a restart: only the CLI
        // should notice the freeze.
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        env: vec![("TURN_AGENT_TURNSERVER_PROBE_FAILURES".into(), "100".into())],
        ..AgentOptions::default()
    });
    let pid = agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;

    signal_pid(pid, nix::sys::signal::Signal::SIGSTOP);
    let control = wait_for(Duration::from_secs(15), "the fallback", || async {
        let control = control_status(&agent).await?;
        (control["fallback"] == true).then_some(control)
    })
    .await;
    assert_eq!(control["up"], false);
    assert!(control["allocations"].is_null());
    let metrics = agent.metrics().await;
    assert!(metrics.contains("turn_agent_control_up 0"), "{metrics}");
    assert!(
        metrics.contains("turn_agent_control_fallback 1"),
        "{metrics}"
    );
    assert!(agent.child_alive());

    signal_pid(pid, nix::sys::signal::Signal::SIGCONT);
    let control = wait_control_up(&agent).await;
    assert_eq!(control["pid"], pid, "the same turnserver");
    assert_eq!(control["fallback"], false);
    assert_eq!(control["fallbacks"], 1);
    let log = agent.log();
    assert_eq!(
        log.matches("falling back to interface counters").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("answers again").count(), 1, "{log}");
}

async fn post(agent: &Agent, path: &str) -> (u16, serde_json::Value) {
    let response = http_client().post(agent.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn sessions_of(agent: &Agent, user: &str) -> Option<u64> {
    let (200, body) = agent.get(&format!("/sessions?user={user}")).await? else {
        return None;
    };
    body["total"].as_u64()
}

#[tokio::test]
async fn a_revoke_deletes_the_old_users_at_once_and_ends_their_sessions() {
    let agent = Agent::start(AgentOptions {
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        env: vec![(
            "TURN_AGENT_CREDENTIALS_ROTATE_MIN_INTERVAL".into(),
            "0s".into(),
        )],
        ..AgentOptions::default()
    });
    let pid = agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let port = agent.files.turn_port;
    // One credential served until a plain rotation (still in its grace
    // period after it) and the one served now: both hold an allocation.
    let older = agent.wait_credential(Duration::from_secs(10)).await;
    let _older_client = hold_allocations(port, &older.userid, &older.password);
    assert_eq!(post(&agent, "/rotate").await.0, 200);
    let old = wait_for(
        Duration::from_secs(10),
        "the rotated credential",
        || async {
            agent
                .credential("")
                .await
                .filter(|served| served.userid != older.userid)
        },
    )
    .await;
    let _old_client = hold_allocations(port, &old.userid, &old.password);
    for user in [&older.userid, &old.userid] {
        wait_for(Duration::from_secs(15), "a held allocation", || async {
            (sessions_of(&agent, user).await? > 0).then_some(())
        })
        .await;
    }

    // Unknown values change nothing.
    for query in [
        "?revoke=1",
        "?revoke=yes",
        "?revoke=",
        "?revoke=true%0D%0Ahalt",
    ] {
        let (status, body) = post(&agent, &format!("/rotate{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    assert_eq!(agent.credential("").await.unwrap().userid, old.userid);

    let (status, body) = post(&agent, "/rotate?revoke=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rotated"], true);
    let revoked: Vec<&str> = body["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user.as_str().unwrap())
        .collect();
    assert!(revoked.contains(&old.userid.as_str()), "{body}");
    assert!(revoked.contains(&older.userid.as_str()), "{body}");
    assert!(body["terminated"].as_u64().unwrap() >= 2, "{body}");
    // Confirmed by a fresh listing, no waiting.
    for user in [&older.userid, &old.userid] {
        assert_eq!(sessions_of(&agent, user).await, Some(0), "{user}");
    }
    let new = agent.credential("").await.unwrap();
    assert_eq!(body["credential"], new.userid.as_str());
    assert!(!uclient_allocates(port, &old.userid, &old.password).await);
    assert!(!uclient_allocates(port, &older.userid, &older.password).await);
    assert!(uclient_allocates(port, &new.userid, &new.password).await);
    let users = agent_users(&agent.userdb(), &agent.files.realm);
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
}

/// turnserver's own `pc` text, over its CLI with the password from the
/// agent's 0600 file.
async fn turnserver_pc(agent: &Agent) -> String {
    let text = std::fs::read_to_string(agent.files.path("turnserver-agent.conf")).unwrap();
    let value = |key: &str| {
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix(key))
            .unwrap()
            .to_string()
    };
    let port: u16 = value("cli-port=").parse().unwrap();
    let mut client = turn_agent::coturn_cli::client::CliClient::new(
        ([127, 0, 0, 1], port).into(),
        turn_agent::secret::Secret::new(value("cli-password=")),
        Duration::from_secs(5),
    );
    client
        .request(&turn_agent::coturn_cli::command::Command::Configuration)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sighup_changes_quotas_in_the_running_turnserver() {
    let agent = Agent::start(AgentOptions {
        turnserver_extra: "control_poll_interval = \"200ms\"\ntotal_quota = 100\nuser_quota = 10\n"
            .into(),
        ..AgentOptions::default()
    });
    let pid = agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let pc = turnserver_pc(&agent).await;
    assert!(pc.contains("Default total-quota: 100 (**)"), "{pc}");
    assert!(pc.contains("Default user-quota: 10 (**)"), "{pc}");
    assert!(pc.contains("Default max-bps: 0 (**)"), "{pc}");

    agent.reload_with(
        "total_quota = 100\nuser_quota = 10\n",
        "total_quota = 200\nuser_quota = 0\nmax_bps = 125000\nbps_capacity = 1250000\n",
    );
    agent
        .wait_log("turnserver.bps_capacity", Duration::from_secs(10))
        .await;
    wait_for(Duration::from_secs(10), "the new quotas in pc", || async {
        let pc = turnserver_pc(&agent).await;
        [
            "Default total-quota: 200 (**)",
            "Default user-quota: 0 (**)",
            "Default max-bps: 125000 (**)",
            "Total server bps-capacity: 1250000 (**)",
        ]
        .iter()
        .all(|line| pc.contains(line))
        .then_some(())
    })
    .await;
    // The same turnserver, never drained or restarted.
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
    assert_eq!(agent.turnservers(), vec![pid]);
    let log = agent.log();
    assert!(
        log.contains("changed in the running turnserver (cc), no restart"),
        "{log}"
    );

    // A bad value is refused by the reload, naming the key; the running
    // values stay.
    agent.reload_with("total_quota = 200", "total_quota = -1");
    agent
        .wait_log("turnserver.total_quota: must be 0", Duration::from_secs(10))
        .await;
    let pc = turnserver_pc(&agent).await;
    assert!(pc.contains("Default total-quota: 200 (**)"), "{pc}");
    assert_eq!(agent.turnservers(), vec![pid]);
}

/// A TURN client's Allocate (or Refresh) carrying an ORIGIN attribute, the
/// text coturn's `ps` prints as it came, signed with a long-term
/// credential. Built by hand: the crate's own TURN client has no ORIGIN.
mod origin_client {
    use hmac::{Hmac, Mac};
    use tokio::net::UdpSocket;

    const MAGIC_COOKIE: u32 = 0x2112_A442;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
        out
    }

    fn message(method: u16, attributes: &[Vec<u8>], key: Option<&[u8]>) -> Vec<u8> {
        let transaction: [u8; 12] = rand::random();
        let mut body = attributes.concat();
        let header = |length: usize| {
            let mut header = Vec::new();
            header.extend_from_slice(&method.to_be_bytes());
            header.extend_from_slice(&(length as u16).to_be_bytes());
            header.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            header.extend_from_slice(&transaction);
            header
        };
        if let Some(key) = key {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
            mac.update(&header(body.len() + 24));
            mac.update(&body);
            body.extend(attribute(0x0008, &mac.finalize().into_bytes()));
        }
        let mut out = header(body.len());
        out.extend(body);
        out
    }

    /// (class and method, attributes) of an answer.
    fn parse(answer: &[u8]) -> (u16, Vec<(u16, Vec<u8>)>) {
        let mut attributes = Vec::new();
        let mut at = 20;
        while at + 4 <= answer.len() {
            let kind = u16::from_be_bytes([answer[at], answer[at + 1]]);
            let length = usize::from(u16::from_be_bytes([answer[at + 2], answer[at + 3]]));
            let value = answer[at + 4..(at + 4 + length).min(answer.len())].to_vec();
            attributes.push((kind, value));
            at += 4 + length + (4 - length % 4) % 4;
        }
        (u16::from_be_bytes([answer[0], answer[1]]), attributes)
    }

    /// MD5(user:realm:password), coturn's long-term key, from coreutils.
    fn long_term_key(user: &str, realm: &[u8], password: &str) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(user.as_bytes()).unwrap();
        input.write_all(b":").unwrap();
        input.write_all(realm).unwrap();
        input.write_all(b":").unwrap();
        input.write_all(password.as_bytes()).unwrap();
        drop(input);
        let output = child.wait_with_output().unwrap();
        let hex = String::from_utf8(output.stdout).unwrap();
        (0..32)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    pub struct Allocation {
        socket: UdpSocket,
        user: String,
        realm: Vec<u8>,
        nonce: Vec<u8>,
        key: Vec<u8>,
    }

    async fn exchange(socket: &UdpSocket, request: &[u8]) -> (u16, Vec<(u16, Vec<u8>)>) {
        socket.send(request).await.unwrap();
        let mut buffer = vec![0; 2048];
        let length =
            tokio::time::timeout(std::time::Duration::from_secs(2), socket.recv(&mut buffer))
                .await
                .expect("a TURN answer")
                .unwrap();
        parse(&buffer[..length])
    }

    fn value(attributes: &[(u16, Vec<u8>)], kind: u16) -> Vec<u8> {
        attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Allocates a UDP relay with `origin` as its ORIGIN.
    pub async fn allocate(
        server: std::net::SocketAddr,
        user: &str,
        password: &str,
        origin: &str,
    ) -> Allocation {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server).await.unwrap();
        let transport = attribute(0x0019, &[17, 0, 0, 0]);
        let origin = attribute(0x802F, origin.as_bytes());
        let (_, challenge) = exchange(
            &socket,
            &message(0x0003, &[transport.clone(), origin.clone()], None),
        )
        .await;
        let realm = value(&challenge, 0x0014);
        let nonce = value(&challenge, 0x0015);
        let key = long_term_key(user, &realm, password);
        let (class, answer) = exchange(
            &socket,
            &message(
                0x0003,
                &[
                    transport,
                    origin,
                    attribute(0x0006, user.as_bytes()),
                    attribute(0x0014, &realm),
                    attribute(0x0015, &nonce),
                ],
                Some(&key),
            ),
        )
        .await;
        assert_eq!(class, 0x0103, "allocate refused: {answer:?}");
        Allocation {
            socket,
            user: user.to_owned(),
            realm,
            nonce,
            key,
        }
    }

    impl Allocation {
        /// Refresh with lifetime 0.
        pub async fn release(self) {
            let (class, answer) = exchange(
                &self.socket,
                &message(
                    0x0004,
                    &[
                        attribute(0x000D, &0u32.to_be_bytes()),
                        attribute(0x0006, self.user.as_bytes()),
                        attribute(0x0014, &self.realm),
                        attribute(0x0015, &self.nonce),
                    ],
                    Some(&self.key),
                ),
            )
            .await;
            assert_eq!(class, 0x0104, "release refused: {answer:?}");
        }
    }
}

/// Listed sessions as (id, user), or `None` while `/sessions` is refused.
async fn listed_sessions(agent: &Agent, query: &str) -> Option<Vec<(String, String)>> {
    let (200, body) = agent.get(&format!("/sessions{query}")).await? else {
        return None;
    };
    Some(
        body["sessions"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap_or_default().to_owned(),
                    s["user"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_session_record_forged_through_a_clients_origin_is_never_trusted() {
    let agent = Agent::start(AgentOptions {
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let served = agent.wait_credential(Duration::from_secs(10)).await;

    // Someone else's sessions.
    let _uclient = hold_allocations(agent.files.turn_port, &served.userid, &served.password);
    let victims = wait_for(Duration::from_secs(15), "the sessions listed", || async {
        let sessions = listed_sessions(&agent, "").await?;
        (!sessions.is_empty()).then_some(sessions)
    })
    .await;
    let victim_id = victims[0].0.clone();

    // A client with a valid credential writes a whole record into its
    // ORIGIN (114 bytes): "mallory" holding the victim's session id. Its
    // own record stays complete and the forged one takes the real lines
    // after it (measured on 4.6.1: src/coturn_cli/testdata).
    let origin = format!(
        "x\nclient protocol UDP, relay protocol UDP\nusage: rp=0, rb=0, sp=0, sb=0\n\n1) id={victim_id:0>18}, user <mallory>:"
    );
    let forger =
        origin_client::allocate(agent.turn_addr(), &served.userid, &served.password, &origin).await;
    // The listing is refused as a whole once the forged record is in it.
    wait_for(Duration::from_secs(15), "the listing refused", || async {
        let mallory = listed_sessions(&agent, "?user=mallory").await;
        assert!(
            mallory.as_ref().is_none_or(|sessions| sessions.is_empty()),
            "a forged session was listed: {mallory:?}"
        );
        mallory.is_none().then_some(())
    })
    .await;
    let (status, body) = delete(&agent, "/sessions?user=mallory").await;
    assert_ne!(status, 200, "{body}");
    // The poller falls back too.
    wait_for(
        Duration::from_secs(10),
        "the control channel down",
        || async {
            let control = control_status(&agent).await?;
            (control["up"] == false).then_some(())
        },
    )
    .await;
    // The log names the refusal without the client's line breaks.
    assert!(
        !agent.log().contains("user <mallory>:\n"),
        "{}",
        agent.log()
    );

    // Released, the listing is read again: the victim's sessions all there.
    forger.release().await;
    let after = wait_for(Duration::from_secs(15), "the listing back", || async {
        listed_sessions(&agent, "").await
    })
    .await;
    for (id, user) in &victims {
        assert!(
            after.contains(&(id.clone(), user.clone())),
            "{id} {user} ended: {after:?}"
        );
    }
    assert!(after.iter().all(|(_, user)| user != "mallory"), "{after:?}");
}

#[tokio::test]
async fn no_cli_in_the_operators_config_file_turns_the_control_channel_off_with_a_warning() {
    let files = AgentFiles::new(&AgentOptions::default());
    let operator_file = files.path("operator-turnserver.conf");
    std::fs::write(&operator_file, "# the operator's own file\nno-cli\n").unwrap();
    let text = std::fs::read_to_string(&files.config_path)
        .unwrap()
        .replace(
            "[turnserver]\n",
            &format!(
                "[turnserver]\nconfig_file = \"{}\"\n",
                operator_file.display()
            ),
        );
    std::fs::write(&files.config_path, text).unwrap();
    let agent = Agent::start_with(files, &AgentOptions::default());
    agent.wait_ready(Duration::from_secs(10)).await;
    agent
        .wait_log(
            "\"no-cli\" in turnserver.config_file turns the control channel off; set turnserver.control = \"off\" instead",
            Duration::from_secs(5),
        )
        .await;
    assert_control_off(&agent).await;
}

/// A `ps` prints at most 256 sessions: past that, `/sessions` lists every
/// one from a `psd` dump in a private file that is removed after.
/// Relay ports 30000-32700: hundreds of allocations need more than
/// relay_range's 100; this range is above every relay_range and below the
/// ephemeral ports.
fn wide_relay_range(files: &AgentFiles) {
    let config = std::fs::read_to_string(&files.config_path).unwrap();
    let config: String = config
        .lines()
        .map(|line| {
            if line.starts_with("min_port = ") {
                "min_port = 30000".to_owned()
            } else if line.starts_with("max_port = ") {
                "max_port = 32700".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&files.config_path, config).unwrap();
}

#[tokio::test]
async fn more_sessions_than_one_ps_prints_are_all_listed_and_ended() {
    let options = AgentOptions {
        turnserver_extra: "control_poll_interval = \"200ms\"\n".into(),
        ..AgentOptions::default()
    };
    let files = AgentFiles::new(&options);
    wide_relay_range(&files);
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let served = agent.wait_credential(Duration::from_secs(10)).await;

    // One uclient -m 150 holds about 190 allocations: two hold over 256.
    let _uclients: Vec<_> = (0..2)
        .map(|_| hold_allocations_of(agent.files.turn_port, &served.userid, &served.password, 150))
        .collect();
    let listed = wait_for(
        Duration::from_secs(60),
        "over 256 sessions listed",
        || async {
            let (200, body) = agent.get("/sessions").await? else {
                return None;
            };
            (body["total"].as_u64()? > 256 && body["sessions"].as_array()?.len() > 256)
                .then_some(body)
        },
    )
    .await;
    let listed_count = listed["sessions"].as_array().unwrap().len() as u64;
    assert_eq!(listed_count, listed["total"].as_u64().unwrap());
    // The status counts every session by transport, not only 256.
    wait_for(Duration::from_secs(10), "over 256 counted", || async {
        let control = control_status(&agent).await?;
        (control["by_transport"]["udp"].as_u64()? > 256).then_some(())
    })
    .await;

    let (status, body) = delete(&agent, &format!("/sessions?user={}", served.userid)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["terminated"].as_u64().unwrap() > 256, "{body}");
    // Every dump file and its directory is gone.
    let left: Vec<_> = std::fs::read_dir(agent.files.dir.path())
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            name.starts_with(".turn-agent-psd-").then_some(name)
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The control channel is off: disabled in `/status`, `/sessions` 503, and
/// no agent-written turnserver file (so no CLI password on disk).
async fn assert_control_off(agent: &Agent) {
    let control = control_status(agent).await.unwrap();
    assert_eq!(control["enabled"], false, "{control}");
    let (status, body) = agent.get("/sessions").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(!agent.files.path("turnserver-agent.conf").exists());
}

/// Not a test: the measurement behind `turnserver.control_poll_interval`'s
/// default (README, "Control channel"). Holds `POLL_COST_SESSIONS` (default
/// 1,000) sessions with uclients, stops them (so turnserver relays nothing
/// and its CPU is the polls'), then counts CPU of the agent and turnserver
/// over 20 polls a second apart against 20 s without polls. Run alone:
/// `cargo nextest run --test control measure_poll_cost --run-ignored only --no-capture`
#[tokio::test]
#[ignore = "a measurement of a few minutes, not a check"]
async fn measure_poll_cost() {
    use nix::sys::signal::Signal;
    let wanted: u64 = std::env::var("POLL_COST_SESSIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1000);
    let options = AgentOptions {
        turnserver_extra: "control_poll_interval = \"1s\"\n".into(),
        ..AgentOptions::default()
    };
    let files = AgentFiles::new(&options);
    wide_relay_range(&files);
    let agent = Agent::start_with(files, &options);
    let turnserver = agent.wait_ready(Duration::from_secs(10)).await;
    wait_control_up(&agent).await;
    let served = agent.wait_credential(Duration::from_secs(10)).await;

    // One uclient -m 150 holds about 190 allocations.
    let uclients: Vec<_> = (0..wanted.div_ceil(150))
        .map(|_| hold_allocations_of(agent.files.turn_port, &served.userid, &served.password, 150))
        .collect();
    let held = wait_for(Duration::from_secs(180), "the sessions held", || async {
        let total = control_status(&agent).await?["by_transport"]["udp"].as_u64()?;
        (total >= wanted).then_some(total)
    })
    .await;
    for uclient in &uclients {
        signal_pid(uclient.id().unwrap(), Signal::SIGSTOP);
    }

    let polls = |control: &serde_json::Value| control["polls"].as_u64().unwrap();
    let window = |seconds: u64| {
        let agent = &agent;
        async move {
            let before = control_status(agent).await.unwrap();
            let cpu_before = (cpu_time(agent.pid()), cpu_time(turnserver));
            let mut durations = Vec::new();
            let mut last = polls(&before);
            let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
            while tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let control = control_status(agent).await.unwrap();
                if polls(&control) != last {
                    last = polls(&control);
                    durations.push(control["last_poll_seconds"].as_f64().unwrap());
                }
            }
            let after = control_status(agent).await.unwrap();
            let cpu = (
                cpu_time(agent.pid()) - cpu_before.0,
                cpu_time(turnserver) - cpu_before.1,
            );
            (polls(&after) - polls(&before), cpu, durations, after)
        }
    };
    let (polled, busy, mut durations, after) = window(20).await;
    agent.reload_with(
        "control_poll_interval = \"1s\"",
        "control_poll_interval = \"1h\"",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_polls, idle, _, _) = window(20).await;
    for uclient in &uclients {
        signal_pid(uclient.id().unwrap(), Signal::SIGCONT);
    }

    durations.sort_by(f64::total_cmp);
    let per_poll = |busy: Duration, idle: Duration| {
        busy.saturating_sub(idle).as_secs_f64() * 1000.0 / (polled - idle_polls) as f64
    };
    println!(
        "sessions held: {held} (listed at the end: {listed}); polls: {polled} in 20 s, {idle_polls} in the idle 20 s",
        listed = after["by_transport"]["udp"]
    );
    println!(
        "wall time per poll: median {:.1} ms, max {:.1} ms",
        durations[durations.len() / 2] * 1000.0,
        durations.last().unwrap() * 1000.0
    );
    println!(
        "CPU per poll: agent {:.1} ms, turnserver {:.1} ms (agent {:?} and turnserver {:?} with polls, {:?} and {:?} without)",
        per_poll(busy.0, idle.0),
        per_poll(busy.1, idle.1),
        busy.0,
        busy.1,
        idle.0,
        idle.1
    );
    assert!(polled >= 10 && held >= wanted);
}
