//! `chc-bench store`: store throughput, in-process, over TCP, and against a real Redis.

/// Arguments of `chc-bench store`.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Write the results here (shared results format).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn run(_a: &StoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("chc-bench store is not implemented yet")
}
