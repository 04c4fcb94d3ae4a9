//! What a running llama-server says it allocated: the buffer lines it prints
//! at load, per device, on every backend (the CPU build included):
//!
//! ```text
//! load_tensors:   CPU_Mapped model buffer size =   120.00 MiB
//! llama_kv_cache:        CPU KV buffer size =    64.00 MiB
//! llama_context:        CPU  output buffer size =     0.49 MiB
//! sched_reserve:      ROCm0 compute buffer size =   300.01 MiB
//! ```

use std::collections::BTreeMap;

use super::Parts;

/// The device a buffer belongs to: host buffers (`CPU`, `CPU_Mapped`,
/// `CPU_REPACK`, `ROCm_Host`, `CUDA_Host`, `Vulkan_Host`) count as `CPU`,
/// device buffers by their own name (`ROCm0`, `CUDA1`, `Vulkan0`).
pub fn buffer_device(buffer: &str) -> String {
    if buffer.starts_with("CPU") || buffer.ends_with("_Host") {
        "CPU".to_owned()
    } else {
        buffer.to_owned()
    }
}

/// One buffer line: `(buffer name, kind, bytes)`.
pub fn parse_buffer_line(line: &str) -> Option<(String, &'static str, u64)> {
    let at = line.find(" buffer size = ")?;
    let value = line[at + " buffer size = ".len()..].trim_start();
    let mut words = value.split_whitespace();
    let number: f64 = words.next()?.parse().ok()?;
    let scale = match words.next()? {
        "MiB" => 1024.0 * 1024.0,
        "KiB" => 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "B" => 1.0,
        _ => return None,
    };
    let mut before = line[..at].split_whitespace().rev();
    let kind = match before.next()? {
        "model" => "weights",
        "KV" | "RS" => "kv",
        "output" => "output",
        "compute" => "compute",
        "LoRA" => "weights",
        _ => return None,
    };
    let name = before.next()?;
    if name.ends_with(':') {
        return None;
    }
    Some((name.to_owned(), kind, (number * scale).round() as u64))
}

/// `(offloaded, offloadable)` from "offloaded N/M layers to GPU".
pub fn offloaded_layers(line: &str) -> Option<(u32, u32)> {
    let rest = line.split_once("offloaded ")?.1;
    let (counts, tail) = rest.split_once(' ')?;
    if !tail.starts_with("layers to GPU") {
        return None;
    }
    let (n, m) = counts.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// The parts per device from a whole log (or what has arrived of it).
/// Model and KV buffers add up (an iSWA cache prints two KV lines); the
/// compute and output buffers are re-reserved at times, and the last line
/// for a buffer counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogUsage {
    pub devices: BTreeMap<String, Parts>,
    /// `(offloaded, offloadable)` layers, from "offloaded N/M layers to GPU".
    pub offloaded: Option<(u32, u32)>,
    last_compute: BTreeMap<String, u64>,
    last_output: BTreeMap<String, u64>,
    /// The multimodal projector's (`--mmproj`, tools/mtmd/clip.cpp):
    /// where it runs ("CLIP using Vulkan0 backend") and its compute buffers
    /// (`reserve_compute_meta:` lines), counted beside the model's.
    projector_device: Option<String>,
    last_projector_compute: BTreeMap<String, u64>,
}

/// The projector's weights: `load_hparams: model size:   50.47 MiB`.
fn projector_model_size(line: &str) -> Option<u64> {
    let rest = line.split_once("load_hparams: model size:")?.1;
    let mut words = rest.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    (words.next()? == "MiB").then(|| (n * 1024.0 * 1024.0).round() as u64)
}

impl LogUsage {
    /// Takes one log line; returns whether it was a buffer line.
    pub fn feed(&mut self, line: &str) -> bool {
        if let Some(o) = offloaded_layers(line) {
            // Printed before the model buffers: a new load, if one ran.
            if !self.last_compute.is_empty() {
                *self = LogUsage::default();
            }
            self.offloaded = Some(o);
            return false;
        }
        if let Some(rest) = line.split_once("CLIP using ").map(|(_, r)| r) {
            if let Some(name) = rest.strip_suffix(" backend") {
                self.projector_device = Some(buffer_device(name.trim()));
            }
            return false;
        }
        if let Some(bytes) = projector_model_size(line) {
            let dev = self
                .projector_device
                .clone()
                .unwrap_or_else(|| "CPU".into());
            self.devices.entry(dev).or_default().weights += bytes;
            return true;
        }
        let Some((name, kind, bytes)) = parse_buffer_line(line) else {
            return false;
        };
        if kind == "compute" && line.contains("reserve_compute_meta:") {
            self.last_projector_compute.insert(name, bytes);
            self.sum_compute_and_output();
            return true;
        }
        // A model buffer after the compute buffers: a new process loading
        // (a restart writes into the same model's log).
        if kind == "weights" && !self.last_compute.is_empty() {
            *self = LogUsage::default();
        }
        match kind {
            "weights" | "kv" => {
                let p = self.devices.entry(buffer_device(&name)).or_default();
                if kind == "weights" {
                    p.weights += bytes;
                } else {
                    p.kv += bytes;
                }
            }
            "compute" => {
                self.last_compute.insert(name, bytes);
            }
            _ => {
                self.last_output.insert(name, bytes);
            }
        }
        self.sum_compute_and_output();
        true
    }

    fn sum_compute_and_output(&mut self) {
        for p in self.devices.values_mut() {
            p.compute = 0;
            p.output = 0;
        }
        for (name, b) in &self.last_compute {
            self.devices.entry(buffer_device(name)).or_default().compute += b;
        }
        for (name, b) in &self.last_output {
            self.devices.entry(buffer_device(name)).or_default().output += b;
        }
        for (name, b) in &self.last_projector_compute {
            self.devices.entry(buffer_device(name)).or_default().compute += b;
        }
    }

    pub fn from_log(text: &str) -> LogUsage {
        let mut u = LogUsage::default();
        for line in text.lines() {
            u.feed(line);
        }
        u
    }

    /// The projector's compute buffers (`--mmproj`), all devices; they are
    /// also in `devices`.
    pub fn projector_compute(&self) -> u64 {
        self.last_projector_compute.values().sum()
    }

    /// The sum over devices.
    pub fn total(&self) -> u64 {
        self.devices.values().map(Parts::total).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_lines() {
        for (line, expected) in [
            (
                "load_tensors: offloaded 20/31 layers to GPU",
                Some((20, 31)),
            ),
            ("load_tensors: offloaded 0/7 layers to GPU", Some((0, 7))),
            ("load_tensors: offloading output layer to GPU", None),
            ("load_tensors: offloaded x/7 layers to GPU", None),
            ("offloaded 3/4 tensors", None),
        ] {
            assert_eq!(offloaded_layers(line), expected, "{line}");
        }
        // A second load (after a restart) starts the figures over.
        let log = "load_tensors: offloaded 4/7 layers to GPU\n\
                   load_tensors: Vulkan0 model buffer size = 1.00 MiB\n\
                   sched_reserve: Vulkan0 compute buffer size = 2.00 MiB\n\
                   load_tensors: offloaded 7/7 layers to GPU\n\
                   load_tensors: Vulkan0 model buffer size = 3.00 MiB\n";
        let u = LogUsage::from_log(log);
        assert_eq!(u.offloaded, Some((7, 7)));
        assert_eq!(u.devices["Vulkan0"].weights, 3 << 20);
        assert_eq!(u.devices["Vulkan0"].compute, 0);
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn buffer_lines_per_device() {
        let log = "\
load_tensors: offloaded 3/3 layers to GPU
load_tensors:   CPU_Mapped model buffer size =   120.00 MiB
load_tensors:        ROCm0 model buffer size =  4000.50 MiB
load_tensors:   CPU_REPACK model buffer size =     8.00 MiB
llama_context:  ROCm_Host  output buffer size =     0.49 MiB
llama_kv_cache:      ROCm0 KV buffer size =    64.00 MiB
llama_kv_cache:      ROCm0 KV buffer size =    16.00 MiB
llama_memory_recurrent:        CPU RS buffer size =     1.00 MiB
sched_reserve:      ROCm0 compute buffer size =   300.00 MiB
sched_reserve:  ROCm_Host compute buffer size =    10.00 MiB
sched_reserve:      ROCm0 compute buffer size =   301.00 MiB
srv  load_model: something else = 12.00 MiB
";
        let u = LogUsage::from_log(log);
        let cpu = &u.devices["CPU"];
        let gpu = &u.devices["ROCm0"];
        assert_eq!(cpu.weights, 128 * MIB);
        assert_eq!(cpu.kv, MIB);
        assert_eq!(cpu.output, (0.49 * MIB as f64).round() as u64);
        assert_eq!(cpu.compute, 10 * MIB);
        assert_eq!(gpu.weights, (4000.5 * MIB as f64) as u64);
        assert_eq!(gpu.kv, 80 * MIB);
        assert_eq!(gpu.compute, 301 * MIB);
        assert_eq!(u.devices.len(), 2);
    }

    #[test]
    fn the_projector_counts_beside_the_model() {
        // llama-server b11434 with --mmproj at -lv 4: the projector's
        // compute line must add to the model's, not replace it.
        let log = "\
0.00.009 I sched_reserve:        CPU compute buffer size =     0.70 MiB
0.00.053 I clip_ctx: CLIP using Vulkan0 backend
0.00.334 I load_hparams: model size:         50.47 MiB
0.00.337 I reserve_compute_meta:    Vulkan0 compute buffer size =     2.86 MiB
0.00.337 I reserve_compute_meta: Vulkan_Host compute buffer size =     0.25 MiB
";
        let u = LogUsage::from_log(log);
        assert_eq!(
            u.devices["Vulkan0"].weights,
            (50.47 * MIB as f64).round() as u64
        );
        assert_eq!(
            u.devices["Vulkan0"].compute,
            (2.86 * MIB as f64).round() as u64
        );
        assert_eq!(u.devices["CPU"].compute, (0.95 * MIB as f64).round() as u64);
        assert_eq!(
            projector_model_size("load_hparams: model size: 1.5 GiB"),
            None
        );
    }

    #[test]
    fn a_new_load_starts_over() {
        let mut u = LogUsage::default();
        for l in [
            "load_tensors:   CPU_Mapped model buffer size =   100.00 MiB",
            "sched_reserve:        CPU compute buffer size =    10.00 MiB",
            "load_tensors:   CPU_Mapped model buffer size =    50.00 MiB",
        ] {
            u.feed(l);
        }
        assert_eq!(u.devices["CPU"].weights, 50 * MIB);
        assert_eq!(u.devices["CPU"].compute, 0);
    }

    #[test]
    fn other_lines_are_not_buffers() {
        for line in [
            "",
            "buffer size = 3 MiB",
            "print_info: file size   = 98.00 MiB (6.00 BPW)",
            "llama_context: n_ctx = 4096",
            "x: CPU compute buffer size = lots MiB",
        ] {
            assert_eq!(parse_buffer_line(line), None, "{line}");
        }
        assert_eq!(
            parse_buffer_line("sched_reserve:    Vulkan0 compute buffer size =    12.50 MiB"),
            Some(("Vulkan0".into(), "compute", 12 * MIB + MIB / 2))
        );
    }
}
