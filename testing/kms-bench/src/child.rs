//! The child processes: the service (ron-kms in-process in a child of
//! its own, its token and addresses on stdout, serving until stdin closes),
//! the bare yardstick server, and the handle the parent keeps on either.
use super::*;

/// The second tenant the service child makes a token for.
pub(crate) const TENANT_B: &str = "bench-b";

/// The child that runs ron-kms: prints its token and addresses, then serves
/// until its stdin closes (the bench exiting closes it).
pub(crate) async fn child_service(
    data_dir: PathBuf,
    no_audit: bool,
    listen: &str,
) -> Result<ExitCode, String> {
    let flags = ron_kms::config::Flags {
        config: None,
        data_dir: Some(data_dir),
        grpc_addr: Some(format!("{listen}:0")),
        http_addr: Some(format!("{listen}:0")),
        amnesia: false,
    };
    let mut cfg =
        ron_kms::config::load(&flags, &ron_kms::config::ProcessEnv).map_err(|e| e.to_string())?;
    cfg.audit.off_for_benchmarks = no_audit;
    let running = ron_kms::server::start(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    // A restart on a used data dir (the kill-9 drill) bootstraps nothing:
    // the caller keeps the tokens it had ("token - -").
    /// `KMS_BENCH_EXTRA_TOKENS=N`: N more tokens in the table (one
    /// transaction), to measure authentication against a large table.
    fn seed_tokens(running: &ron_kms::server::Running) -> Result<(), String> {
        let n: usize = match std::env::var("KMS_BENCH_EXTRA_TOKENS") {
            Ok(v) => v
                .parse()
                .map_err(|_| "KMS_BENCH_EXTRA_TOKENS: a number".to_string())?,
            Err(_) => return Ok(()),
        };
        let rows = (0..n)
            .map(|i| {
                ron_kms::auth::mint(&ron_kms::auth::NewToken {
                    tenant: format!("seeded-{}", i % 1000),
                    scopes: ron_kms::auth::Scopes::parse("kms:sign,kms:verify").unwrap_or_default(),
                    ..Default::default()
                })
                .map(|(_, r)| r)
                .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        running
            .kms
            .store()
            .insert_tokens(&rows)
            .map_err(|e| e.to_string())?;
        eprintln!("seeded {n} extra tokens");
        Ok(())
    }
    match running.bootstrap_token.clone() {
        Some(token) => {
            // a second tenant, for the tenant-isolation mix
            let (other, _) = ron_kms::auth::create_token(
                running.kms.store().as_ref(),
                &ron_kms::auth::NewToken {
                    tenant: TENANT_B.into(),
                    scopes: ron_kms::auth::Scopes::all(),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            seed_tokens(&running)?;
            running.kms.tokens().reload().map_err(|e| e.to_string())?;
            println!("token {token} {other}");
        }
        None => println!("token - -"),
    }
    println!(
        "grpc http://{} http http://{}",
        running.grpc_addr, running.http_addr
    );
    let _ = std::io::stdout().flush();
    match running.faults.clone() {
        Some(f) => serve_fault_commands(f).await,
        None => wait_for_stdin_eof().await,
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// With fault injection on, the service child's stdin carries the drill's
/// switches, one per line: `down`, `up`, `latency MS`, `errors RATE`,
/// `flap UP_MS DOWN_MS`, `clear`. EOF ends the child.
pub(crate) async fn serve_fault_commands(f: std::sync::Arc<ron_kms::backend::faults::Faults>) {
    let _ = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let w: Vec<&str> = line.split_whitespace().collect();
            let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or(0));
            match w.as_slice() {
                ["down"] => f.set_down(true),
                ["up"] => f.set_down(false),
                ["latency", m] => f.set_latency(ms(m)),
                ["errors", r] => f.set_error_rate(r.parse().unwrap_or(0.0)),
                ["flap", u, d] => f.set_flap(Some((ms(u), ms(d)))),
                ["clear"] => f.clear(),
                _ => eprintln!("kms-bench service: unknown fault command {:?}", line.trim()),
            }
            line.clear();
        }
    })
    .await;
}

pub(crate) async fn child_bare(alg: &str) -> Result<ExitCode, String> {
    let alg = Algorithm::parse(alg).ok_or_else(|| format!("unknown algorithm {alg}"))?;
    let (g, h) = bare::serve(alg).await?;
    println!("token none");
    println!("grpc http://{g} http http://{h}");
    let _ = std::io::stdout().flush();
    wait_for_stdin_eof().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn wait_for_stdin_eof() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
}

/// A server in a child process; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) endpoint: Endpoint,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) fn start(
        args: &[&str],
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        Self::start_env(args, &[], transport, dir)
    }

    /// As [`Server::start`], with extra environment for the child.
    pub(crate) fn start_env(
        args: &[&str],
        envs: &[(&str, &str)],
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(args).envs(envs.iter().copied());
        Self::start_cmd(cmd, transport, dir)
    }

    /// As [`Server::start`], with the command made by the caller (a
    /// drill's runs the child in a network namespace).
    pub(crate) fn start_cmd(
        mut cmd: Command,
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut next = || -> Result<String, String> {
            lines
                .next()
                .ok_or("the server exited during start-up")?
                .map_err(|e| e.to_string())
        };
        let tokens = next()?;
        let mut tokens = tokens.trim_start_matches("token ").split_whitespace();
        let token = tokens.next().unwrap_or_default().to_string();
        let token_b = tokens.next().map(str::to_string);
        let addrs = next()?;
        let parts: Vec<&str> = addrs.split_whitespace().collect();
        let (grpc, http) = match parts.as_slice() {
            ["grpc", g, "http", h] => (g.to_string(), h.to_string()),
            _ => return Err(format!("unexpected start-up line {addrs:?}")),
        };
        Ok(Server {
            child,
            endpoint: Endpoint {
                transport,
                grpc,
                http,
                token,
                token_b,
            },
            _dir: dir,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One fault command to a service child started with fault injection.
    pub(crate) fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("the child has no stdin")?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("fault command {line:?}: {e}"))
    }

    /// SIGKILL, and wait for it to be gone.
    pub(crate) fn kill9(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| e.to_string())?;
        self.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        close_and_reap(&mut self.child, Duration::from_secs(5));
    }
}

/// Close a child's stdin (its signal to exit), give it `grace` to go, then
/// kill it; reaped either way.
pub(crate) fn close_and_reap(child: &mut Child, grace: Duration) {
    drop(child.stdin.take());
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn with_auth<T>(m: T, token: &str) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token".to_string())?,
    );
    Ok(r)
}
