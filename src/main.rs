use std::process::ExitCode;

use clap::Parser;
use default_deny_guard::cli::{Cli, Command};
use default_deny_guard::{certs, check, policies, reconcile, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of main: dropping it writes out the last log lines.
    let _logs = telemetry::init(cli.log_format);
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match cli.command {
        Command::Serve(args) => match runtime().block_on(server::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "serve failed");
                ExitCode::FAILURE
            }
        },
        Command::Reconcile(args) => match runtime().block_on(reconcile::run(args)) {
            Ok(exit) => ExitCode::from(exit.code()),
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed");
                ExitCode::from(reconcile::Exit::ApiError.code())
            }
        },
        Command::Check(args) => check::run(&args),
        Command::Certs(args) => certs::run(&args),
        Command::Policies(args) => {
            let printed = args
                .rules
                .settings()
                .map_err(|e| e.to_string())
                .and_then(|settings| policies::render(&settings, &args.options()).map_err(|e| e.to_string()));
            match printed {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("default-deny-guard policies: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
