use std::process::ExitCode;

use clap::Parser;
use kata_nri_manager::cli::{self, Cli, Command, ConfigCommand};
use kata_nri_manager::nri::LaunchEnv;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::new(e).context("starting the async runtime")),
    };
    // containerd starts a pre-registered plugin with no arguments and the NRI_PLUGIN_* variables.
    let result = if std::env::args_os().len() <= 1
        && let Some(launch) = LaunchEnv::from_env()
    {
        runtime.block_on(cli::run::launched(launch))
    } else {
        let cli = Cli::parse();
        match cli.command {
            Command::Run(args) => runtime.block_on(cli::run::external(args)),
            Command::Pull(args) => runtime.block_on(cli::pull::run(args)),
            Command::Policy(command) => cli::policy::run(command),
            Command::Configure(args) => cli::configure::configure(args),
            Command::Uninstall(args) => cli::configure::uninstall(args),
            Command::Status(args) => match cli::status::run(args) {
                Ok(exit) => return ExitCode::from(exit.code()),
                Err(e) => Err(e),
            },
            Command::Rollback(args) => cli::rollback::run(args),
            Command::Runtimeclass(args) => cli::runtimeclass::run(args),
            Command::Config(ConfigCommand::Check {
                config,
                node_config,
                operator,
            }) => cli::config::check(&config, node_config.as_deref(), operator),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
