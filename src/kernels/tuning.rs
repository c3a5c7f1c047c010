//! The per-adapter choice of kernel variants, in one table.

use super::{BenchCase, BenchSize};
use crate::{Gpu, Result};

/// Problems with candidate variants: (problem, [(variant, case)]).
pub fn tune_cases(_gpu: &Gpu, _size: BenchSize) -> Result<Vec<(String, Vec<(String, BenchCase)>)>> {
    Ok(vec![])
}

pub fn current_choice(_gpu: &Gpu, _problem: &str) -> String {
    String::new()
}
