//! A real ZooKeeper server (Debian's jar, started with java directly) on a
//! free loopback port in a temp dir, and an independent client to read it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_tcp_port, wait_for};

pub struct ZooKeeper {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl ZooKeeper {
    /// Starts a standalone server; `tick_ms` bounds session timeouts to
    /// [2, 20] ticks.
    ///
    /// A port picked free can be taken by another test before java binds
    /// it; then java exits (or another test's server answers there), and
    /// this tries a fresh port rather than share a server with that test.
    pub async fn start(tick_ms: u32) -> ZooKeeper {
        for _ in 0..5 {
            let mut server = ZooKeeper::prepare(tick_ms);
            if server.try_spawn().await {
                return server;
            }
        }
        panic!("ZooKeeper could not bind five free ports in a row");
    }

    /// Writes the configuration and picks the port, without starting.
    pub fn prepare(tick_ms: u32) -> ZooKeeper {
        ZooKeeper::prepare_on(tick_ms, free_tcp_port())
    }

    /// Writes the configuration for a server on `port`, without starting.
    pub fn prepare_on(tick_ms: u32, port: u16) -> ZooKeeper {
        let dir = tempfile::Builder::new()
            .prefix("turn-agent-zk-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("zoo.cfg"),
            format!(
                "tickTime={tick_ms}\ndataDir={d}/data\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr,mntr,ruok,cons,dump,conf,stat\n\
                 minSessionTimeout={}\n",
                tick_ms * 2
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("log4j.properties"),
            format!(
                "log4j.rootLogger=INFO, file\nlog4j.appender.file=org.apache.log4j.FileAppender\n\
                 log4j.appender.file.File={d}/zookeeper.log\nlog4j.appender.file.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.file.layout.ConversionPattern=%d %p %c{{1}}: %m%n\n"
            ),
        )
        .unwrap();
        ZooKeeper {
            dir,
            port,
            child: None,
        }
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts java on the prepared port and waits until it serves.
    pub async fn spawn(&mut self) {
        assert!(
            self.try_spawn().await,
            "ZooKeeper could not serve on port {}: taken by another process",
            self.port
        );
    }

    /// Starts java and waits until this server, known by its own dataDir,
    /// serves on the port. False when java exits first (the port was
    /// taken) or a server of another test answers there.
    pub async fn try_spawn(&mut self) -> bool {
        self.child = Some(spawn_java(self.dir.path()));
        let port = self.port;
        let ours = format!("dataDir={}/", self.dir.path().join("data").display());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match four_letter(port, "conf") {
                Some(conf) if conf.contains(&ours) => {
                    let serving =
                        four_letter(port, "srvr").is_some_and(|srvr| srvr.contains("Mode:"));
                    if serving {
                        return true;
                    }
                }
                Some(conf) if conf.contains("dataDir=") => {
                    self.stop();
                    return false;
                }
                _ => {}
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after 20s waiting for ZooKeeper to serve on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs the server (sessions stay in its data until it returns).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// SIGSTOPs the JVM: the port still accepts TCP connections but
    /// nothing answers, like a frozen server.
    pub fn freeze(&self) {
        signal_child(self.child.as_ref(), nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONTs a frozen JVM.
    pub fn thaw(&self) {
        signal_child(self.child.as_ref(), nix::sys::signal::Signal::SIGCONT);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        // A frozen JVM ignores SIGKILL until it is continued.
        self.thaw();
        self.stop();
    }
}

fn signal_child(child: Option<&Child>, signal: nix::sys::signal::Signal) {
    if let Some(child) = child {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
    }
}

/// A four-letter-word command; `None` if the server does not answer.
pub fn four_letter(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// An independent reader: its own session through the zookeeper-client
/// crate (not the agent's code).
pub struct Reader {
    pub client: zookeeper_client::Client,
}

impl Reader {
    pub async fn connect(server: &ZooKeeper) -> Reader {
        Reader::connect_to(server.connect_string()).await
    }

    pub async fn connect_to(connect: String) -> Reader {
        let client = wait_for(Duration::from_secs(10), "a reader session", || {
            let connect = connect.clone();
            async move {
                zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .with_fail_eagerly()
                    .connect(&connect)
                    .await
                    .ok()
            }
        })
        .await;
        Reader { client }
    }

    /// The node's JSON and version, or `None` when it does not exist (or the
    /// server cannot be asked).
    pub async fn node(&self, path: &str) -> Option<(serde_json::Value, zookeeper_client::Stat)> {
        let (data, stat) = self.client.get_data(path).await.ok()?;
        Some((serde_json::from_slice(&data).ok()?, stat))
    }

    pub async fn exists(&self, path: &str) -> Option<bool> {
        match self.client.check_stat(path).await {
            Ok(stat) => Some(stat.is_some()),
            Err(_) => None,
        }
    }
}

/// A 3-node ensemble on loopback.
pub struct Ensemble {
    pub dir: tempfile::TempDir,
    pub client_ports: Vec<u16>,
    /// Per node, its quorum port: only the leader listens on it.
    pub quorum_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Ensemble {
    pub async fn start(size: usize) -> Ensemble {
        Ensemble::start_with(size, "").await
    }

    /// With extra `zoo.cfg` lines (e.g. `maxClientCnxns=0` for many sessions).
    pub async fn start_with(size: usize, extra_config: &str) -> Ensemble {
        Ensemble::start_nodes(size, extra_config, size).await
    }

    /// Writes every node's configuration but starts only the first
    /// `running` nodes (a quorum), and waits until one of them follows and
    /// one leads; [`Ensemble::revive`] starts the others later.
    pub async fn start_nodes(size: usize, extra_config: &str, running: usize) -> Ensemble {
        let dir = tempfile::Builder::new()
            .prefix("turn-agent-zk-ensemble-")
            .tempdir()
            .unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| free_tcp_port()).collect();
        let peers: Vec<(u16, u16)> = (0..size)
            .map(|_| (free_tcp_port(), free_tcp_port()))
            .collect();
        let servers: String = peers
            .iter()
            .enumerate()
            .map(|(index, (peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", index + 1)
            })
            .collect();
        let mut children = Vec::new();
        for (index, port) in client_ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("node{}", index + 1));
            std::fs::create_dir_all(node_dir.join("data")).unwrap();
            std::fs::write(node_dir.join("data/myid"), format!("{}\n", index + 1)).unwrap();
            std::fs::write(
                node_dir.join("zoo.cfg"),
                format!(
                    "tickTime=200\ninitLimit=50\nsyncLimit=25\ndataDir={}/data\nclientPort={port}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                     4lw.commands.whitelist=srvr,mntr,ruok,cons,dump,conf,stat\n{extra_config}\n{servers}",
                    node_dir.display()
                ),
            )
            .unwrap();
            children.push((index < running).then(|| spawn_java(&node_dir)));
        }
        let ensemble = Ensemble {
            dir,
            client_ports,
            quorum_ports: peers.iter().map(|(peer, _)| *peer).collect(),
            children,
        };
        if running == size {
            for index in 0..size {
                ensemble.wait_serving(index, "the ensemble's quorum").await;
            }
        } else {
            wait_for(Duration::from_secs(30), "a partial quorum", || {
                let formed = (0..running).any(|index| ensemble.is_follower(index))
                    && ensemble.leader_by_quorum_port().is_some();
                async move { formed.then_some(()) }
            })
            .await;
        }
        ensemble
    }

    /// Waits until node `index` serves clients as leader or follower.
    pub async fn wait_serving(&self, index: usize, what: &str) {
        let port = self.client_ports[index];
        wait_for(Duration::from_secs(30), what, || async move {
            four_letter(port, "srvr")
                .filter(|answer| {
                    answer.contains("Mode: leader") || answer.contains("Mode: follower")
                })
                .map(|_| ())
        })
        .await;
    }

    /// Node `index` runs and says it follows a leader.
    pub fn is_follower(&self, index: usize) -> bool {
        self.children[index].is_some()
            && four_letter(self.client_ports[index], "srvr")
                .is_some_and(|answer| answer.contains("Mode: follower"))
    }

    /// The leader, found by its quorum port (only a leader listens there),
    /// which also works with `leaderServes=no`, where a leader's `srvr`
    /// says it is not serving.
    pub fn leader_by_quorum_port(&self) -> Option<usize> {
        (0..self.client_ports.len()).find(|&index| {
            self.children[index].is_some()
                && TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], self.quorum_ports[index])),
                    Duration::from_millis(500),
                )
                .is_ok()
        })
    }

    pub fn connect_string(&self) -> String {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the current leader.
    pub fn leader(&self) -> Option<usize> {
        (0..self.client_ports.len()).find(|&index| {
            self.children[index].is_some()
                && four_letter(self.client_ports[index], "srvr")
                    .is_some_and(|answer| answer.contains("Mode: leader"))
        })
    }

    /// Starts a killed node again with its data (it rejoins the quorum).
    pub fn revive(&mut self, index: usize) {
        if self.children[index].is_none() {
            let node_dir = self.dir.path().join(format!("node{}", index + 1));
            self.children[index] = Some(spawn_java(&node_dir));
        }
    }

    pub fn freeze(&self, index: usize) {
        signal_child(
            self.children[index].as_ref(),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }

    pub fn thaw(&self, index: usize) {
        signal_child(
            self.children[index].as_ref(),
            nix::sys::signal::Signal::SIGCONT,
        );
    }

    pub fn kill(&mut self, index: usize) {
        signal_child(
            self.children[index].as_ref(),
            nix::sys::signal::Signal::SIGCONT,
        );
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
    }
}

fn spawn_java(dir: &std::path::Path) -> Child {
    let classpath = format!(
        "{}:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar",
        dir.display()
    );
    Command::new("java")
        .args([
            "-Xmx64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            &classpath,
        ])
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(dir.join("zoo.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java must be installed (scripts/install-deps.sh)")
}
