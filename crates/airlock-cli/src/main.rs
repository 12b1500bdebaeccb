//! `airlock`: the one binary. Parses arguments, runs the subcommand, maps the outcome to an
//! exit code (0 ok, 1 verification failed or input refused, 2 usage or I/O error).

mod cli;
mod cmd;
mod confinement;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            output::error_line(&err);
            output::exit_code(&err)
        }
    }
}
