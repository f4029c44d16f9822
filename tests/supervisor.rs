//! The supervisor against a real turnserver: start, crash, hang, crash loop,
//! stale processes, and the agent's own death.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;
use turn_agent::supervisor::probe::stun_binding;

async fn answers_stun(agent: &Agent) -> bool {
    stun_binding(agent.turn_addr(), Duration::from_millis(100))
        .await
        .is_ok()
}

#[tokio::test]
async fn agent_start_answers_stun_and_is_ready_within_two_seconds() {
    let agent = Agent::start(AgentOptions::default());
    let started = Instant::now();
    agent.wait_ready(Duration::from_secs(2)).await;
    eprintln!("ready after {:?}", started.elapsed());
    assert!(
        stunclient_answers(agent.files.turn_port).await,
        "turnutils_stunclient got no answer"
    );
    let (status, body) = agent.get("/healthz").await.unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(agent.turnservers().len(), 1);
}

#[tokio::test]
async fn killed_turnserver_is_replaced_within_a_second_twenty_times() {
    let agent = Agent::start(AgentOptions::default());
    let mut pid = agent.wait_ready(Duration::from_secs(5)).await;
    let mut recoveries = Vec::new();
    for round in 0..20 {
        signal_pid(pid, Signal::SIGKILL);
        let killed = Instant::now();
        // Done when a new turnserver answers STUN and the agent has seen it
        // ready: a child killed before the agent saw it answer is, to the
        // agent, a failed start, which rightly backs off.
        let new_pid = wait_for(
            Duration::from_secs(1),
            "a new turnserver answering STUN",
            || async {
                let pids = agent.turnservers();
                let [only] = pids.as_slice() else { return None };
                if *only == pid || !answers_stun(&agent).await {
                    return None;
                }
                match agent.get("/readyz").await {
                    Some((200, body)) if body["turnserver"]["pid"] == *only => Some(*only),
                    _ => None,
                }
            },
        )
        .await;
        recoveries.push(killed.elapsed());
        pid = new_pid;
        let _ = round;
    }
    recoveries.sort();
    eprintln!(
        "SIGKILL -> STUN answer: median {:?}, max {:?}",
        recoveries[recoveries.len() / 2],
        recoveries[recoveries.len() - 1]
    );
    let ready_pid = agent.wait_ready(Duration::from_secs(2)).await;
    assert_eq!(ready_pid, pid);
    let (_, body) = agent.get("/readyz").await.unwrap();
    assert!(
        body["turnserver"]["restarts"].as_u64().unwrap() >= 20,
        "{body}"
    );
    assert!(agent.child_alive());
}

#[tokio::test]
async fn crash_loop_backs_off_with_growing_delays_and_low_cpu() {
    let mut options = AgentOptions::default();
    options
        .extra_args
        .push("--no-such-turnserver-option".into());
    options.json_logs = true;
    // Listed on purpose, so validation lets turnserver see (and exit on) it.
    options.turnserver_extra = "restart_delay_min = \"20ms\"\nrestart_delay_max = \"640ms\"\n\
         pass_through_flags = [\"--no-such-turnserver-option\"]\n"
        .into();
    let agent = Agent::start(options);

    let cpu_before = cpu_time(agent.pid());
    let watched = Instant::now();
    let body = wait_for(Duration::from_secs(10), "seven restarts", || async {
        match agent.get("/readyz").await {
            Some((status, body)) => {
                assert_eq!(
                    status, 503,
                    "a crash-looping turnserver must not be ready: {body}"
                );
                (body["turnserver"]["restarts"].as_u64() >= Some(7)).then_some(body)
            }
            None => None,
        }
    })
    .await;
    let wall = watched.elapsed();
    let cpu = cpu_time(agent.pid()) - cpu_before;

    let delays: Vec<u64> = agent
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| event["fields"]["restart_delay_ms"].as_u64())
        .collect();
    assert!(delays.len() >= 7, "{delays:?}");
    assert_eq!(&delays[..6], &[20, 40, 80, 160, 320, 640], "{delays:?}");
    assert!(
        delays.windows(2).all(|pair| pair[0] <= pair[1]),
        "{delays:?}"
    );
    assert!(
        body["turnserver"]["crash_loop"].as_bool().unwrap_or(false)
            || body["turnserver"]["phase"] == "starting",
        "{body}"
    );
    assert!(agent.log().contains("crash loop"));
    assert!(agent.child_alive(), "the agent must never give up");
    eprintln!("crash loop: agent used {cpu:?} CPU in {wall:?}");
    assert!(cpu < wall / 4, "agent used {cpu:?} CPU in {wall:?}");
}

#[tokio::test]
async fn stopped_turnserver_is_detected_as_hung_and_replaced() {
    let agent = Agent::start(AgentOptions::default());
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    signal_pid(pid, Signal::SIGSTOP);
    let stopped = Instant::now();
    // probe_interval 200ms x (probe_failures 3 + 1)
    let bound = Duration::from_millis(800);
    // ...plus restart_delay_min (100ms) and a little for kill and spawn.
    let slack = Duration::from_millis(250);
    let new_pid = wait_for(bound + slack, "a replacement turnserver", || async {
        agent.turnservers().into_iter().find(|other| *other != pid)
    })
    .await;
    eprintln!(
        "SIGSTOP -> replacement spawned after {:?}",
        stopped.elapsed()
    );
    assert_eq!(agent.wait_ready(Duration::from_secs(2)).await, new_pid);
    assert_eq!(
        agent.turnservers(),
        vec![new_pid],
        "the hung child must be gone"
    );
    assert!(agent.log().contains("hung"));
}

#[tokio::test]
async fn sigterm_stops_the_agent_and_its_turnserver() {
    let mut agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert_eq!(agent.turnservers(), Vec::<u32>::new());
    assert!(agent.log().contains("shutdown complete"));
}

#[tokio::test]
async fn sigkill_of_the_agent_takes_turnserver_along_within_a_second() {
    let mut agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(2)).await;
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(1),
        "the orphaned turnserver to die",
        || async { agent.turnservers().is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "agent SIGKILL -> turnserver gone after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn stale_turnserver_from_a_dead_agent_is_killed_at_start() {
    let options = AgentOptions::default();
    let files = AgentFiles::new(&options);
    // A turnserver as a killed agent would have left it: same pidfile, not
    // our child.
    let pidfile = files.path("turnserver.pid");
    let mut stale = std::process::Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={}", files.turn_port),
            &format!("--pidfile={}", pidfile.display()),
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
            "--simple-log",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stale_pid = stale.id();
    wait_for(Duration::from_secs(5), "the stale pidfile", || {
        let written = std::fs::read_to_string(&pidfile).ok();
        async move {
            written
                .filter(|text| text.trim() == stale_pid.to_string())
                .map(|_| ())
        }
    })
    .await;

    let agent = Agent::start_with(files, &options);
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    assert_ne!(pid, stale_pid);
    wait_for(
        Duration::from_secs(2),
        "the stale turnserver to exit",
        || {
            let exited = stale.try_wait().unwrap().is_some();
            async move { exited.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        agent.turnservers(),
        vec![pid],
        "exactly one turnserver must run"
    );
    assert!(agent.log().contains("stale turnserver"));
}

#[tokio::test]
async fn sighup_with_a_bad_file_is_reported_and_ignored() {
    let agent = Agent::start(AgentOptions::default());
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    let original = std::fs::read_to_string(&agent.files.config_path).unwrap();

    std::fs::write(&agent.files.config_path, "[api]\nlisten = \"nowhere\"\n").unwrap();
    agent.signal(Signal::SIGHUP);
    wait_for(
        Duration::from_secs(5),
        "the reload error in the log",
        || {
            let found = agent.log().contains("api.listen");
            async move { found.then_some(()) }
        },
    )
    .await;

    let changed = original.replace("probe_failures = 3", "probe_failures = 4");
    std::fs::write(&agent.files.config_path, changed).unwrap();
    agent.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the changed key in the log", || {
        let found = agent.log().contains("turnserver.probe_failures");
        async move { found.then_some(()) }
    })
    .await;

    assert!(agent.child_alive());
    assert_eq!(agent.wait_ready(Duration::from_secs(2)).await, pid);
}

#[tokio::test]
async fn a_clean_stop_removes_turnservers_pidfile() {
    let mut agent = Agent::start(AgentOptions::default());
    let turnserver = agent.wait_ready(Duration::from_secs(5)).await;
    let pidfile = agent.files.path("turnserver.pid");
    wait_for(Duration::from_secs(5), "turnserver's pidfile", || {
        let written = std::fs::read_to_string(&pidfile)
            .ok()
            .filter(|text| text.trim() == turnserver.to_string());
        async move { written.map(|_| ()) }
    })
    .await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(agent.turnservers().is_empty());
    assert!(!pidfile.exists(), "the pidfile outlived a clean stop");
}
