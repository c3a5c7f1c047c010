//! Allocations checked before anything is created or submitted: a buffer over the adapter's
//! limits, or a planned graph over the memory budget, is an `Error::OutOfMemory` naming the
//! size asked and the limit, instead of a driver failure (or the OOM killer) half-way through.

use super::Gpu;
use crate::{Error, Result};

impl Gpu {
    /// Refuses one buffer of `size` bytes that the adapter cannot create (`max_buffer_size`) or
    /// bind to a kernel (the storage binding limit). `what` names it in the message.
    pub(crate) fn check_buffer(&self, size: u64, what: impl std::fmt::Display) -> Result<()> {
        let max_buffer = self.limits.max_buffer_size;
        if size > max_buffer {
            return Err(Error::OutOfMemory(format!(
                "{what} needs {}, more than the largest buffer this GPU allows (its limit is {}); use smaller images or fewer at once",
                human_bytes(size),
                human_bytes(max_buffer)
            )));
        }
        if size > self.max_binding_size() {
            return Err(Error::OutOfMemory(format!(
                "{what} needs {}, more than this GPU binds in one buffer (its binding limit is {}); \
                 use smaller images or fewer at once",
                human_bytes(size),
                human_bytes(self.max_binding_size())
            )));
        }
        Ok(())
    }

    /// The older name, still used by kernels that allocate their own buffers.
    pub(crate) fn check_binding(&self, size: u64, label: &str) -> Result<()> {
        self.check_buffer(size, label)
    }

    /// Refuses `total` bytes allocated at once (a planned graph's activations) over the memory
    /// budget, before any of it is created.
    pub(crate) fn check_budget(&self, total: u64, what: impl std::fmt::Display) -> Result<()> {
        match self.memory_budget() {
            Some(budget) if total > budget => Err(Error::OutOfMemory(format!(
                "{what} need {} in all, more than the memory budget of {} ({}); use smaller images or fewer at once",
                human_bytes(total),
                human_bytes(budget),
                if std::env::var_os("LOWBIT_MEMORY_BUDGET").is_some() {
                    "LOWBIT_MEMORY_BUDGET"
                } else {
                    "the RAM available to this CPU adapter; LOWBIT_MEMORY_BUDGET sets another"
                }
            ))),
            _ => Ok(()),
        }
    }
}

/// `n` bytes as B, KiB, MiB or GiB, whichever reads best.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

/// `512MiB`, `2GiB`, `1.5G`, `100000` (bytes): a size as people write one.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = (s[..split].parse::<f64>().ok()?, s[split..].trim().to_ascii_lowercase());
    let scale: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    (num.is_finite() && num >= 0.0).then_some((num * scale as f64) as u64)
}

/// The RAM the kernel says is available now (Linux `MemAvailable`); `None` elsewhere.
pub fn available_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_the_way_people_write_them() {
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("64 kb"), Some(64 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("3 parsecs"), None);
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
    }
}
