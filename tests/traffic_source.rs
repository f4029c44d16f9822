//! `traffic.source = "turnserver"` against a real turnserver: the relayed
//! load coturn counts is what the registry publishes as used, while the
//! loopback interface carries several times more (every leg of the relay
//! plus unrelated traffic), and a control channel that stops answering
//! hands the measurement back to the interface counters.

mod common;

use std::time::Duration;

use common::zookeeper::ZooKeeper;
use common::*;
use tokio::time::Instant;

/// The relayed load: 4 uclient sessions, one 1,200-byte message each
/// every 2 ms, about 19 Mbps of payload (coturn counts each message once;
/// lo carries it three times: client to relay, relay to relay, relay to
/// client). Messages for `seconds`.
fn relay_load(agent: &Agent, user: &str, password: &str, seconds: u32) -> tokio::process::Child {
    tokio::process::Command::new("turnutils_uclient")
        .args(["-y", "-c", "-l", "1200", "-m", "4", "-z", "2", "-n"])
        .arg((seconds * 500).to_string())
        .args(["-u", user, "-w", password, "-p"])
        .arg(agent.files.turn_port.to_string())
        .arg("127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Payload Mbps of [`relay_load`].
const RELAYED_MBPS: f64 = 4.0 * 1200.0 * 8.0 * 500.0 / 1e6;

/// Unrelated UDP on lo (not through turnserver) at about `mbps`, until
/// the returned task is aborted: the interface counters see it, coturn
/// does not.
fn other_traffic_on_lo(mbps: f64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let source = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        source.connect(sink.local_addr().unwrap()).await.unwrap();
        let datagram = [0u8; 1200];
        let per_tick = (mbps * 1e6 / 8.0 / 100.0 / 1200.0).ceil() as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut buffer = [0u8; 1500];
        loop {
            tick.tick().await;
            for _ in 0..per_tick {
                let _ = source.send(&datagram).await;
            }
            while sink.try_recv(&mut buffer).is_ok() {}
        }
    })
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn turnserver_source_publishes_coturns_relay_rate_not_the_interface() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(AgentOptions {
        turnserver_extra: "control_poll_interval = \"1s\"\n".into(),
        // Probes may fail while turnserver is frozen without a restart.
        env: vec![("TURN_AGENT_TURNSERVER_PROBE_FAILURES".into(), "100".into())],
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"/turn/servers\"\nnode = \"host-a\"\n\
             publish_interval = \"1s\"\nmax_silence = \"1s\"\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = 1000.0\nhysteresis_percent = 0.0\n\
             source = \"turnserver\"\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(10)).await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(15),
        "the control channel up",
        || async {
            let up = metric(&agent.metrics().await, "turn_agent_control_up");
            (up == Some(1.0)).then_some(())
        },
    )
    .await;

    let other = other_traffic_on_lo(40.0);
    let _load = relay_load(&agent, &served.userid, &served.password, 90);
    // coturn refreshes a session's counters every 4,096 packets, and
    // uclient's pace varies on a loaded machine: wait for a 4 s window
    // (16 readings) whose mean is within 50 % of the load.
    let started = Instant::now();
    let window = std::cell::RefCell::new(std::collections::VecDeque::new());
    let (used, lo_mbps, samples) = wait_for(
        Duration::from_secs(45),
        "a window of coturn's rate near the load",
        || async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let reading = (Instant::now(), lo_bytes());
            let used = metric(&agent.metrics().await, "turn_agent_traffic_used_mbps")?;
            let mut window = window.borrow_mut();
            window.push_back((reading, used));
            if window.len() > 16 {
                window.pop_front();
            }
            let ((first_at, first_lo), _) = *window.front()?;
            let seconds = (reading.0 - first_at).as_secs_f64();
            let lo_mbps = (reading.1 - first_lo) as f64 * 8.0 / 1e6 / seconds;
            let samples: Vec<f64> = window.iter().map(|(_, used)| *used).collect();
            let mean = samples.iter().sum::<f64>() / samples.len() as f64;
            (samples.len() == 16 && (mean - RELAYED_MBPS).abs() <= RELAYED_MBPS * 0.5)
                .then_some((mean, lo_mbps, samples))
        },
    )
    .await;
    other.abort();
    eprintln!(
        "relayed {RELAYED_MBPS:.1} Mbps: turnserver source {used:.1} Mbps (window ended {:?} after the load started), lo {lo_mbps:.1} Mbps; samples {samples:?}",
        started.elapsed()
    );
    // lo carries the load three times over plus the other traffic: a
    // registry reading the interface would publish far more.
    assert!(
        lo_mbps > used * 2.5,
        "lo {lo_mbps:.1} Mbps, used {used:.1} Mbps"
    );
    assert!(!agent.log().contains(FELL_BACK));

    // turnserver frozen: its CLI stops answering and the registry's
    // sampler turns to lo's counters, saying so once (the host is also
    // withdrawn while turnserver does not answer STUN, so nothing is
    // published meanwhile). Thawed, it returns to coturn's rate: with 40 Mbps
    // of other traffic on lo, only coturn's count can publish under 30.
    let pid = agent.turnservers()[0];
    let other = other_traffic_on_lo(40.0);
    signal_pid(pid, nix::sys::signal::Signal::SIGSTOP);
    agent.wait_log(FELL_BACK, Duration::from_secs(20)).await;
    let metrics = agent.metrics().await;
    assert_eq!(metric(&metrics, "turn_agent_control_fallback"), Some(1.0));
    signal_pid(pid, nix::sys::signal::Signal::SIGCONT);
    wait_for(Duration::from_secs(20), "coturn's rate again", || async {
        let log = agent.log();
        (log.matches(MEASURING_WITH_COTURN).count() == 2).then_some(())
    })
    .await;
    agent.wait_ready(Duration::from_secs(20)).await;
    let start = Instant::now();
    let used = wait_for(
        Duration::from_secs(10),
        "coturn's rate published",
        || async {
            let used = metric(&agent.metrics().await, "turn_agent_traffic_used_mbps")?;
            (used < 30.0).then_some(used)
        },
    )
    .await;
    let lo_mbps = {
        let before = lo_bytes();
        let at = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        (lo_bytes() - before) as f64 * 8.0 / 1e6 / at.elapsed().as_secs_f64()
    };
    other.abort();
    eprintln!(
        "after recovery: used {used:.1} Mbps after {:?}, lo {lo_mbps:.1} Mbps",
        start.elapsed()
    );
    assert!(lo_mbps > 30.0, "lo {lo_mbps:.1} Mbps");
    assert_eq!(agent.log().matches(FELL_BACK).count(), 1);
}

const FELL_BACK: &str = "measuring with the interface counters until it returns";
const MEASURING_WITH_COTURN: &str = "measuring relayed traffic with turnserver's own counters";
