//! The memory side of `rocm-llm plan`: each model's estimate per device and
//! the always-on models' sum against the devices llama-server will use.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Device, Estimate, Parts, estimate_model};
use crate::spec::ModelConfig;

/// A device as `llama-server --list-devices` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedDevice {
    pub name: String,
    pub description: String,
    pub total: u64,
    pub free: u64,
}

/// Parses `llama-server --list-devices`:
/// `  ROCm0: AMD Radeon RX 7800 XT (16368 MiB, 16200 MiB free)`.
pub fn parse_list_devices(text: &str) -> Vec<ListedDevice> {
    const MIB: u64 = 1 << 20;
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (name, rest) = l.split_once(": ")?;
            if name.contains(' ') {
                return None;
            }
            let open = rest.rfind(" (")?;
            let inner = rest[open + 2..].strip_suffix(')')?;
            let (total, free) = inner.split_once(", ")?;
            let total: u64 = total.strip_suffix(" MiB")?.parse().ok()?;
            let free: u64 = free.strip_suffix(" MiB free")?.parse().ok()?;
            Some(ListedDevice {
                name: name.to_owned(),
                description: rest[..open].to_owned(),
                total: total * MIB,
                free: free * MIB,
            })
        })
        .collect()
}

/// Asks `server --list-devices`, bounded to 15 s; no devices when it
/// cannot run (then everything is planned on the host).
pub fn list_devices(server: &Path) -> Vec<ListedDevice> {
    let Ok(mut child) = Command::new(server)
        .arg("--list-devices")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    parse_list_devices(&out)
}

/// The estimate of one model on these GPUs.
pub fn model_estimate(m: &ModelConfig, gpus: &[Device]) -> Result<Estimate, String> {
    let checked = crate::gguf::check_model(&m.model).map_err(|e| e.to_string())?;
    estimate_model(&checked.header, &m.launch, gpus)
}

/// Per-device sums.
pub fn sum_devices<'a>(
    estimates: impl IntoIterator<Item = &'a Estimate>,
) -> BTreeMap<String, Parts> {
    let mut out: BTreeMap<String, Parts> = BTreeMap::new();
    for e in estimates {
        for (d, p) in &e.devices {
            out.entry(d.clone()).or_default().add(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_devices_output_is_parsed() {
        let text = "\
ggml_cuda_init: found 1 ROCm devices:
Available devices:
  ROCm0: AMD Radeon RX 7800 XT (16368 MiB, 16200 MiB free)
  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (32000 MiB, 31000 MiB free)
";
        let d = parse_list_devices(text);
        assert_eq!(
            d,
            vec![
                ListedDevice {
                    name: "ROCm0".into(),
                    description: "AMD Radeon RX 7800 XT".into(),
                    total: 16368 << 20,
                    free: 16200 << 20,
                },
                ListedDevice {
                    name: "Vulkan0".into(),
                    description: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
                    total: 32000 << 20,
                    free: 31000 << 20,
                },
            ]
        );
        assert!(parse_list_devices("Available devices:\n  (none)\n").is_empty());
        // Nothing runs: no devices, everything planned on the host.
        assert!(list_devices(Path::new("/nonexistent/llama-server")).is_empty());
    }
}
