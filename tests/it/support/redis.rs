//! A real `redis-server` on 127.0.0.1, on a free port, as the fleet-wide rate limit tests
//! need it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where redis-server is, if it is installed. Under CI (`CI=true`) it must be: a missing
/// binary fails the test instead of skipping it, so a green run cannot hide a missing
/// install step.
pub fn redis_binary() -> Option<PathBuf> {
    let found = [
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/usr/sbin/redis-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "redis-server is not installed, and CI=true: .ci/run must install it (apt-get install redis-server)"
        );
        eprintln!("redis-server is not installed; skipping (it is required when CI=true)");
    }
    found
}

/// A redis-server process, killed on drop.
pub struct Redis {
    binary: PathBuf,
    pub port: u16,
    /// Extra arguments, such as `--requirepass`.
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port, or `None` (outside CI) when it is not installed.
    pub fn start() -> Option<Redis> {
        Self::start_with(&[])
    }

    /// Starts one with extra arguments.
    pub fn start_with(args: &[&str]) -> Option<Redis> {
        let binary = redis_binary()?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let mut redis = Redis {
            binary,
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port, with no data (after [`Redis::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// PING answers, with PONG or with a demand for a password.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && (answer[0] == b'+' || answer[0] == b'-')
    }

    /// Sends `commands` on one connection, each as a RESP array, and returns the first
    /// line of each answer.
    pub fn send(&self, commands: &[&[&str]]) -> Vec<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        commands
            .iter()
            .map(|command| {
                let mut frame = format!("*{}\r\n", command.len());
                for part in *command {
                    frame.push_str(&format!("${}\r\n{part}\r\n", part.len()));
                }
                stream.write_all(frame.as_bytes()).expect("send");
                let mut line = String::new();
                std::io::BufRead::read_line(&mut reader, &mut line).expect("answer");
                line.trim_end().to_owned()
            })
            .collect()
    }

    /// Kills the server: its connections close and its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
