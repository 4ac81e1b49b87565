//! Log setup: `RUST_LOG` filters, text for people, JSON for clusters.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing to stderr; `RUST_LOG` overrides the default `info`.
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        Format::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("canaryd: logging not initialised: {e}");
    }
}
