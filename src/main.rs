use std::process::ExitCode;

use clap::Parser;
use default_deny_guard::cli::{Cli, Command};
use default_deny_guard::{server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of main: dropping it writes out the last log lines.
    let _logs = telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(server::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "serve failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
