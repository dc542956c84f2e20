//! The `ron-kms` command: argument parsing ([`args`]), the server
//! ([`serve`]), the gRPC client commands ([`client`]) and the offline ones
//! ([`admin`]). Owns the process's runtime and how failures are printed.
use std::process::ExitCode;

use clap::Parser as _;

mod admin;
mod args;
mod client;
mod output;
mod serve;

use args::{AuditCmd, Cli, Cmd, TokensCmd, TpmCmd};

pub(crate) type Failure = Box<dyn std::error::Error>;

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.cmd {
        Cmd::Serve(a) => serve::serve(a).await,
        Cmd::Tokens(t) => tokens(t, cli.output).await,
        Cmd::Audit(AuditCmd::Verify { paths, key }) => admin::audit_verify(paths, key),
        Cmd::Tpm(TpmCmd::Reseal {
            data_dir,
            config,
            pcr_digest,
        }) => admin::tpm_reseal(data_dir, config, pcr_digest),
        Cmd::Keys(k) => client::keys(k, cli.output).await,
        c @ (Cmd::Sign { .. }
        | Cmd::Verify { .. }
        | Cmd::Mac { .. }
        | Cmd::VerifyMac { .. }
        | Cmd::Wrap { .. }
        | Cmd::Unwrap { .. }) => client::crypto(c, cli.output).await,
    }
}

/// `tokens …`: offline on a data dir, or through the server.
async fn tokens(t: TokensCmd, out: output::Output) -> Result<ExitCode, Failure> {
    if t.at().offline() {
        admin::tokens(t, out)
    } else {
        client::tokens(t, out).await
    }
}

/// Parse, run on ron-kms's runtime, print a failure and exit 2 on one.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match ron_kms::runtime::builder().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(st) = e.downcast_ref::<tonic::Status>() {
                let code = st
                    .metadata()
                    .get("kms-error-code")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                eprintln!("error: {:?} ({code}): {}", st.code(), st.message());
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(2)
        }
    }
}
