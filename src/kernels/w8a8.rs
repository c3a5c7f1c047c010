//! (placeholder: being written)

use super::{BenchCase, BenchSize};
use crate::{Gpu, Result};

pub fn bench_cases(_gpu: &Gpu, _size: BenchSize) -> Result<Vec<BenchCase>> {
    Ok(vec![])
}
