//! A throwaway PostgreSQL server for tests: a temporary cluster on a free loopback port, started
//! once per test binary (start-up takes a second or two) and removed when dropped.
//!
//! The server is Debian's (`scripts/test.sh` installs it when missing); its binaries live under
//! `/usr/lib/postgresql/<version>/bin` (or `CARDLINK_PG_BIN`). `initdb` and `postgres` refuse to
//! run as root, and CI runs as root: then the cluster belongs to the `postgres` user and every
//! command runs through `runuser`. Durability is off (`fsync=off`): the data is thrown away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long the server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
    server: Child,
}

impl TestPostgres {
    /// Creates and starts a cluster; waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new().prefix("cardlink-pg-").tempdir()?;
        if as_postgres_user {
            run(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = command(as_postgres_user, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        run(&mut initdb).context("initdb")?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut postgres = command(as_postgres_user, &bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = postgres.spawn().context("starting postgres")?;
        let running = Self { dir, bin, port, as_postgres_user, server };
        running.wait_until_ready()?;
        Ok(running)
    }

    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL on port {} not ready after {START_TIMEOUT:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL of the cluster's `postgres` database, as the store takes it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let mut stop = command(self.as_postgres_user, &self.bin.join("pg_ctl"));
        stop.arg("-D").arg(self.dir.path().join("data")).args(["stop", "-m", "immediate", "-w"]);
        if !stop.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            let _ = self.server.kill();
        }
        let _ = self.server.wait();
    }
}

/// The directory with `initdb`, `postgres`, `pg_ctl` and `pg_isready`: `CARDLINK_PG_BIN`, or the
/// newest `/usr/lib/postgresql/<version>/bin`.
fn server_binaries() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CARDLINK_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server under /usr/lib/postgresql (scripts/test.sh installs Debian's)")?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program`, run as the `postgres` user when we are root.
fn command(as_postgres_user: bool, program: &Path) -> Command {
    if as_postgres_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
