//! `tracer`: parses the command line, sets up logging and the runtime, and
//! runs one command. Errors end here as one line on stderr and exit code 1.

use clap::Parser;
use tracer::{
    app,
    cli::{Cli, Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|error| exit_on_bad_flags(error));
    let capture = match &cli.command {
        Command::Run(a) => &a.capture,
        Command::Watch(a) => &a.capture,
        Command::Record(a) => &a.capture,
        Command::Check(a) => a,
    };
    init_logging(&capture.log, capture.log_format);
    if let Err(error) = run(cli) {
        eprintln!("tracer: error: {error:#}");
        std::process::exit(1);
    }
}

/// `--help` and `--version` print as usual; a bad flag becomes one line that
/// names the flag and what it accepts, and exit code 2.
fn exit_on_bad_flags(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    eprintln!("tracer: error: {} (see tracer --help)", line.join(" "));
    std::process::exit(2);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One thread: the pipeline is a single sequential task; the metrics
    // server shares the thread between ring-buffer batches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(app::run(args)),
        Command::Watch(args) => runtime.block_on(app::watch(args)),
        Command::Record(args) => runtime.block_on(app::record(args)),
        Command::Check(args) => app::check(args),
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("tracer: error: --log {filter:?}: {e}; e.g. --log info or --log tracer=debug");
        std::process::exit(2);
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
