//! `serve`: load the configuration, set up logs (and tokio-console), start
//! the server, print the bootstrap banner and the bound addresses on
//! stdout, and shut down cleanly on SIGINT or SIGTERM.
use std::io::Write as _;
use std::process::ExitCode;

use ron_kms::config::{self, Flags, ProcessEnv};

use super::args::ServeArgs;
use super::Failure;

/// Logs to stderr (text or JSON, filtered by `KMS_LOG`), plus the
/// tokio-console layer when `KMS_CONSOLE_ADDR` is set. The log filter is
/// attached to the log layer only, so the console still sees the runtime's
/// task events.
fn init_tracing(cfg: &config::Config) -> Result<(), Failure> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.filter)
        .map_err(|e| format!("config: KMS_LOG: {e}"))?;
    let logs = match cfg.log.format {
        config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        config::LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "console")]
    if let Some(addr) = cfg.log.console_addr {
        let console = console_subscriber::ConsoleLayer::builder()
            .server_addr(addr)
            .spawn();
        registry.with(console).init();
        tracing::info!(%addr, "tokio-console instrumentation served");
        return Ok(());
    }
    registry.init();
    Ok(())
}

pub(crate) async fn serve(a: ServeArgs) -> Result<ExitCode, Failure> {
    let print_bootstrap = a.print_bootstrap_token;
    let flags = Flags {
        config: a.config,
        data_dir: a.data_dir,
        grpc_addr: a.grpc_addr,
        http_addr: a.http_addr,
        amnesia: a.amnesia,
    };
    let cfg = config::load(&flags, &ProcessEnv)?;
    init_tracing(&cfg)?;
    let running = ron_kms::server::start(&cfg).await?;
    if let Some(t) = &running.bootstrap_token {
        // Never logged; only its hash is stored. Printed only in amnesia
        // mode (where there is no data dir) or when asked for.
        match &running.bootstrap_file {
            Some(path) if !print_bootstrap => println!(
                "bootstrap: created tenant {:?} with an operator token in {} (mode 0600; move it to your secret store, then delete the file)",
                cfg.bootstrap_tenant,
                path.display()
            ),
            _ => println!(
                "bootstrap: created tenant {:?} with an operator token (shown once, store it now):\n{t}",
                cfg.bootstrap_tenant
            ),
        }
        if cfg.amnesia {
            eprintln!("amnesia mode: keys, tokens and the master key live in memory only and vanish on exit");
        }
        let _ = std::io::stdout().flush();
    }
    if ron_kms::runtime::LIFO_SLOT_DISABLED {
        tracing::debug!("runtime: tokio's LIFO slot is disabled");
    } else {
        tracing::warn!("runtime: built without --cfg tokio_unstable, so tokio's LIFO slot stays on and audited throughput is lower (PERFORMANCE.md)");
    }
    // The handlers go in before the address line: a supervisor (or a
    // test) that sends SIGTERM as soon as it reads that line must get a
    // clean shutdown, not the default action of the signal.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // On stdout, after the bootstrap banner, so a supervisor (or a test)
    // reading stdout knows both the token and the bound addresses.
    println!(
        "ron-kms {} serving gRPC on {} and HTTP on {} ({})",
        env!("CARGO_PKG_VERSION"),
        running.grpc_addr,
        running.http_addr,
        if cfg.amnesia {
            "amnesia: in memory only".to_string()
        } else {
            format!("data dir {}", cfg.data_dir.display())
        }
    );
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
