//! `lowbit demo`: the showcase. (Filled in once the kernel families land.)

use clap::Args;

use crate::Gpu;

#[derive(Args)]
pub struct DemoArgs {}

pub fn run(gpu: &Gpu, _args: DemoArgs) -> anyhow::Result<()> {
    println!("adapter: {}", gpu.adapter_name());
    Ok(())
}
