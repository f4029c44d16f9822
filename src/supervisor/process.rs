//! The process shell: spawning turnserver so it can never outlive the agent,
//! routing its output into our logs, stopping it, and clearing a stale one.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log_safe::LogSafe;
use crate::status::ChildExit;

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Spawns children from one dedicated, long-lived thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process. Tokio's blocking-pool threads come and go, so a child
/// forked from one would be killed at a random moment. This thread lives as
/// long as the [`Spawner`]: it is dropped only after the supervisor has
/// stopped its child, and if the agent dies the thread dies with it, which is
/// exactly when the child should go.
pub struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the spawner thread inside the current Tokio runtime.
    pub fn start() -> io::Result<Spawner> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("turnserver-spawner".into())
            .spawn(move || {
                // Child reaping is registered with the runtime, so spawn inside it.
                let _runtime = runtime.enter();
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Spawns `command` with a parent-death signal, in its own process group
    /// (so a Ctrl-C meant for the agent does not skip its ordered stop), with
    /// stdout and stderr piped.
    pub async fn spawn(&self, mut command: Command) -> io::Result<Child> {
        let parent = std::process::id();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the hook runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: prctl and getppid are plain
        // syscalls, and errors are built from raw errno without allocating.
        unsafe {
            command.pre_exec(move || die_with_parent(parent));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

/// Runs in the child between fork and exec.
fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
    // The parent may have died between fork and prctl; then no signal will
    // ever come, so refuse to exec.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    Ok(())
}

/// Longest child output line logged; the rest of a longer line is dropped
/// (and counted by the truncation marker of the part that is logged).
const MAX_LINE_BYTES: u64 = 4096;

/// Characters of a child line shown in one log record.
const MAX_LINE_CHARS: usize = 1000;

/// Forwards each line the child writes to `tracing` with target `turnserver`.
///
/// The child's output holds client-controlled text (a TURN USERNAME is
/// logged as sent), so every line is escaped with [`LogSafe`]: a CR/LF in it
/// cannot start a forged record, an ANSI escape cannot repaint a terminal,
/// and a line is read and shown only up to a bound.
async fn route_output<R>(stream: R, pid: u32, stream_name: &'static str)
where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut record = Vec::with_capacity(256);
    loop {
        record.clear();
        if !read_bounded_line(&mut reader, &mut record).await {
            break;
        }
        // turnserver writes each message in one write, with the
        // client's text inside it as sent: a line that is already
        // buffered behind this one and does not open with turnserver's
        // `<uptime>: ` prefix is the rest of the same message (a CR/LF
        // in a USERNAME), so it stays in this record.
        while record.len() < MAX_LINE_BYTES as usize
            && !reader.buffer().is_empty()
            && !starts_with_uptime(reader.buffer())
        {
            if !read_bounded_line(&mut reader, &mut record).await {
                break;
            }
        }
        log_child_line(&record, pid, stream_name);
    }
}

/// How long a reaped child's output may keep flowing before its routing is
/// stopped: a grandchild that inherited the pipe (a `sh -c` wrapper's
/// background job) would otherwise hold it open for ever.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The tasks forwarding one child's stdout and stderr, owned by the
/// supervisor and joined after the child is reaped.
pub struct OutputRouting {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl OutputRouting {
    pub fn new() -> OutputRouting {
        OutputRouting {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Forwards `stream` (each line escaped and bounded, as described on
    /// `route_output`) on a tracked task.
    pub fn route<R>(&self, stream: R, pid: u32, stream_name: &'static str)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                () = route_output(stream, pid, stream_name) => {}
            }
        });
    }

    /// Waits for the streams to end (they do once the child is reaped and
    /// nothing else holds its pipes), at most `grace`; then tells the
    /// tasks to stop and waits for them. True when the streams ended by
    /// themselves. Either way no routing task remains when it returns.
    pub async fn finish(self, grace: Duration) -> bool {
        self.tasks.close();
        let ended = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !ended {
            self.stop.cancel();
            self.tasks.wait().await;
        }
        ended
    }
}

impl Default for OutputRouting {
    fn default() -> Self {
        OutputRouting::new()
    }
}

/// Appends the next line (newline included) to `record`, reading at most
/// [`MAX_LINE_BYTES`] of it and dropping the rest; false at the end.
async fn read_bounded_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    record: &mut Vec<u8>,
) -> bool {
    let start = record.len();
    match reader.take(MAX_LINE_BYTES).read_until(b'\n', record).await {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            if !record.ends_with(b"\n") && (record.len() - start) as u64 == MAX_LINE_BYTES {
                skip_rest_of_line(reader).await;
            }
            true
        }
    }
}

/// Whether `bytes` open with turnserver's `<seconds since start>: ` prefix.
fn starts_with_uptime(bytes: &[u8]) -> bool {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && bytes[digits..].starts_with(b": ")
}

/// Reads and drops bytes up to the next newline, in bounded steps.
async fn skip_rest_of_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) {
    let mut scratch = Vec::with_capacity(MAX_LINE_BYTES as usize);
    loop {
        scratch.clear();
        match reader
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut scratch)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) if scratch.ends_with(b"\n") => return,
            Ok(_) => {}
        }
    }
}

fn log_child_line(line: &[u8], pid: u32, stream_name: &'static str) {
    let text = String::from_utf8_lossy(line);
    let text = strip_uptime_prefix(text.trim_end_matches(['\n', '\r']).trim_start());
    if text.trim().is_empty() {
        return;
    }
    let shown = LogSafe::new(text).truncated_at(MAX_LINE_CHARS);
    if text.contains("ERROR") {
        tracing::error!(target: "turnserver", pid, stream = stream_name, "{shown}");
    } else if text.contains("WARNING") {
        tracing::warn!(target: "turnserver", pid, stream = stream_name, "{shown}");
    } else {
        tracing::info!(target: "turnserver", pid, stream = stream_name, "{shown}");
    }
}

/// Drops the `<seconds since start>: : ` prefix of turnserver's simple log
/// lines; our own events carry a timestamp already.
fn strip_uptime_prefix(line: &str) -> &str {
    match line.split_once(": ") {
        Some((seconds, rest))
            if !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest.strip_prefix(": ")
                .or_else(|| rest.strip_prefix(':'))
                .unwrap_or(rest)
                .trim_start()
        }
        _ => line,
    }
}

/// How a child ended, for logs, `/readyz` and metrics.
pub fn describe_exit(status: io::Result<ExitStatus>) -> ChildExit {
    ChildExit::from_wait(status)
}

/// Stops a child: SIGTERM, up to `timeout` for it to exit, then SIGKILL.
/// Always reaps it, so its port is free when this returns.
pub async fn stop_child(child: &mut Child, timeout: Duration) -> ChildExit {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(timeout, child.wait()).await {
            return describe_exit(status);
        }
        tracing::warn!(pid, ?timeout, "turnserver ignored SIGTERM, sending SIGKILL");
    }
    kill_child(child).await
}

/// Removes turnserver's pidfile after its process `pid` was stopped and
/// reaped (turnserver leaves it behind). A pidfile that names another
/// process is left alone: it is not ours to remove.
pub fn remove_pidfile(pidfile: &Path, pid: u32) {
    let names_our_child = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        == Some(pid);
    if names_our_child {
        if let Err(error) = std::fs::remove_file(pidfile) {
            tracing::warn!(pidfile = %LogSafe::new(&pidfile.to_string_lossy()), %error, "cannot remove turnserver's pidfile");
        }
    }
}

/// SIGKILL and reap.
pub async fn kill_child(child: &mut Child) -> ChildExit {
    let _ = child.start_kill();
    describe_exit(child.wait().await)
}

/// Kills a turnserver that an earlier agent left behind, found through the
/// pidfile. The process must really be a turnserver started with this
/// pidfile; anything else is left alone. Returns the pid that was killed.
pub async fn kill_stale_turnserver(pidfile: &Path, timeout: Duration) -> Option<u32> {
    let text = std::fs::read_to_string(pidfile).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    if pid == std::process::id() || !is_our_turnserver(pid, pidfile) {
        return None;
    }
    tracing::warn!(pid, pidfile = %LogSafe::new(&pidfile.to_string_lossy()), "killing a stale turnserver left by an earlier agent");
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    if !wait_gone(pid, timeout).await {
        let _ = kill(target, Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5)).await;
    }
    Some(pid)
}

fn is_our_turnserver(pid: u32, pidfile: &Path) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let is_turnserver = std::fs::read_to_string(proc_dir.join("comm"))
        .map(|comm| comm.trim() == "turnserver")
        .unwrap_or(false);
    let pidfile_flag = format!("--pidfile={}", pidfile.display());
    let uses_pidfile = std::fs::read(proc_dir.join("cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|byte| *byte == 0)
                .any(|arg| arg == pidfile_flag.as_bytes())
        })
        .unwrap_or(false);
    is_turnserver && uses_pidfile && !is_zombie(pid)
}

/// A zombie has exited; only its parent's `wait` is missing.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name is in parentheses and may contain spaces.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_prefix_is_stripped() {
        assert_eq!(
            strip_uptime_prefix("0: : Relay ports initialization done"),
            "Relay ports initialization done"
        );
        assert_eq!(strip_uptime_prefix("12: : ERROR: x"), "ERROR: x");
        assert_eq!(strip_uptime_prefix("0: : "), "");
        assert_eq!(
            strip_uptime_prefix("socket: Protocol not supported"),
            "socket: Protocol not supported"
        );
        assert_eq!(strip_uptime_prefix("RFC 3489/5389"), "RFC 3489/5389");
    }

    #[test]
    fn only_a_pidfile_naming_the_stopped_child_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("turnserver.pid");
        std::fs::write(&pidfile, "4242\n").unwrap();
        remove_pidfile(&pidfile, 4243);
        assert!(pidfile.exists());
        remove_pidfile(&pidfile, 4242);
        assert!(!pidfile.exists());
        remove_pidfile(&pidfile, 4242);
    }

    #[test]
    fn the_uptime_prefix_starts_a_new_record() {
        assert!(starts_with_uptime(b"12: : session 001"));
        assert!(!starts_with_uptime(b"INFO forged"));
        assert!(!starts_with_uptime(b": x"));
        assert!(!starts_with_uptime(b"12:x"));
    }

    #[tokio::test]
    async fn a_pidfile_pointing_elsewhere_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("turnserver.pid");
        let mut sleeper = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        std::fs::write(&pidfile, format!("{}\n", sleeper.id().unwrap())).unwrap();
        assert_eq!(
            kill_stale_turnserver(&pidfile, Duration::from_millis(100)).await,
            None
        );
        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "a non-turnserver was killed"
        );
        // Missing and garbage pidfiles are no error either.
        std::fs::write(&pidfile, "not a pid").unwrap();
        assert_eq!(
            kill_stale_turnserver(&pidfile, Duration::from_millis(100)).await,
            None
        );
        assert_eq!(
            kill_stale_turnserver(&dir.path().join("missing"), Duration::from_millis(100)).await,
            None
        );
        sleeper.kill().await.unwrap();
    }

    #[tokio::test]
    async fn output_routing_is_joined_when_the_streams_end() {
        let routing = OutputRouting::new();
        let (mut writer, reader) = tokio::io::duplex(64);
        routing.route(reader, 1, "stdout");
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"1: last words\n")
            .await
            .unwrap();
        drop(writer);
        let tasks = routing.tasks.clone();
        assert!(routing.finish(Duration::from_secs(30)).await);
        assert!(tasks.is_empty(), "a routing task outlived finish");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipe_held_open_does_not_hang_the_join() {
        let routing = OutputRouting::new();
        // The write side stays open, as when a grandchild inherited it.
        let (_held, reader) = tokio::io::duplex(64);
        routing.route(reader, 1, "stderr");
        let tasks = routing.tasks.clone();
        let started = Instant::now();
        assert!(!routing.finish(OUTPUT_GRACE).await);
        assert_eq!(started.elapsed(), OUTPUT_GRACE);
        assert!(tasks.is_empty(), "a routing task outlived finish");
    }

    #[tokio::test]
    async fn a_grandchild_holding_the_pipe_does_not_hang_the_join() {
        let spawner = Spawner::start().unwrap();
        let mut command = Command::new("sh");
        // The shell exits at once; its background sleep keeps stdout open.
        command.args(["-c", "sleep 5 & echo started"]);
        let mut child = spawner.spawn(command).await.unwrap();
        let routing = OutputRouting::new();
        routing.route(child.stdout.take().unwrap(), child.id().unwrap(), "stdout");
        routing.route(child.stderr.take().unwrap(), child.id().unwrap(), "stderr");
        child.wait().await.unwrap();
        let started = std::time::Instant::now();
        assert!(!routing.finish(Duration::from_millis(200)).await);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn stop_child_escalates_to_sigkill() {
        let spawner = Spawner::start().unwrap();
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "trap '' TERM; echo started; while :; do sleep 0.05; done",
        ]);
        let mut child = spawner.spawn(command).await.unwrap();
        // Wait until the trap is installed before signalling.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let how = stop_child(&mut child, Duration::from_millis(200))
            .await
            .to_string();
        assert!(how.contains("SIGKILL") || how.contains("9"), "{how}");
    }
}
