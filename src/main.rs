use std::process::ExitCode;

use clap::Parser;
use default_deny_guard::cli::{Cli, Command};
use default_deny_guard::{audit, certs, check, policies, reconcile, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of main: dropping it writes out the last log lines.
    let _logs = telemetry::init(cli.log_format);
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match cli.command {
        Command::Serve(args) => match args.config().and_then(|config| runtime().block_on(server::run(config))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "serve failed");
                ExitCode::FAILURE
            }
        },
        Command::Reconcile(args) => {
            let run = args.config().map_err(reconcile::RunError::Config);
            match run.and_then(|config| runtime().block_on(reconcile::run(config))) {
                Ok(exit) => ExitCode::from(exit.code()),
                Err(e) => {
                    tracing::error!(error = %e, "reconcile failed");
                    ExitCode::from(reconcile::Exit::ApiError.code())
                }
            }
        }
        Command::Check(args) => match args.config() {
            Ok(config) => check::run(&config),
            Err(e) => {
                eprintln!("default-deny-guard check: {e}");
                ExitCode::from(check::EXIT_UNREADABLE)
            }
        },
        Command::Certs(args) => certs::run(&args.into()),
        Command::Crds(args) => {
            let mut out = String::new();
            for api in args.api {
                for crd in audit::report::crds(api) {
                    out.push_str("---\n");
                    out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises"));
                }
            }
            print!("{out}");
            ExitCode::SUCCESS
        }
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
