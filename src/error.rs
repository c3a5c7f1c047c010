//! One error type for the engine. GPU failures (device lost, validation, out of memory) are
//! turned into values here instead of the panics wgpu's default handlers would raise.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
    #[error("shader `{name}` failed to compile: {message}")]
    Shader { name: String, message: String },
    #[error("shape error: {0}")]
    Shape(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `bail!`-style helpers that keep call sites short.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { return Err($crate::Error::Shape(format!($($arg)*))) };
}
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { return Err($crate::Error::Invalid(format!($($arg)*))) };
}
