//! What a model needs on each device, before it is launched, and what it
//! takes once it runs.
//!
//! The estimate is pure: a GGUF header, the launch options and the devices
//! in; bytes per device out, in the parts llama-server itself reports
//! (weights, KV cache, compute buffers, output buffer) plus a per-backend
//! overhead. Its rules follow llama.cpp b11434's loader and context setup
//! (see docs/memory.md for each rule and its source, and for how close it
//! comes to llama-server's own figures).
//!
//! - [`hparams`]: the model's shape from its header.
//! - [`settings`]: the options that shape memory, resolved like llama-server.
//! - [`estimate`]: placement, weights, KV, compute, output.
//! - [`log`]: the buffer lines llama-server prints, per device.
//! - [`probe`]: measured usage from amdgpu sysfs/KFD/fdinfo and nvidia-smi.

pub mod accuracy;
pub mod estimate;
pub mod hparams;
pub mod log;
pub mod plan;
pub mod probe;
pub mod settings;

use serde::{Deserialize, Serialize};

pub use estimate::{Backend, Device, Estimate, Overheads, estimate, estimate_model};
pub use hparams::Hparams;
pub use settings::Settings;

/// Bytes on one device, by what holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    pub weights: u64,
    pub kv: u64,
    pub compute: u64,
    pub output: u64,
    pub overhead: u64,
}

impl Parts {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv)
            .saturating_add(self.compute)
            .saturating_add(self.output)
            .saturating_add(self.overhead)
    }

    pub fn add(&mut self, o: &Parts) {
        self.weights += o.weights;
        self.kv += o.kv;
        self.compute += o.compute;
        self.output += o.output;
        self.overhead += o.overhead;
    }
}

/// `5.81 GiB`, `470 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        for (n, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (469_760, "458.75 KiB"),
            (5 << 30, "5.00 GiB"),
        ] {
            assert_eq!(human_bytes(n), text);
        }
    }

    #[test]
    fn parts_add_up() {
        let mut a = Parts {
            weights: 1,
            kv: 2,
            compute: 3,
            output: 4,
            overhead: 5,
        };
        assert_eq!(a.total(), 15);
        a.add(&a.clone());
        assert_eq!(a.total(), 30);
    }
}
