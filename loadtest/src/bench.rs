//! placeholder
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[arg(long)]
    pub dir: PathBuf,
}

pub fn run(_a: &ReportArgs) -> anyhow::Result<()> {
    Ok(())
}
