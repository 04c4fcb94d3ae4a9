//! The memory side of `rocm-llm plan`: each model's estimate per device and
//! the always-on models' sum against the devices llama-server will use.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Device, Estimate, Overheads, Parts, estimate_model};
use crate::spec::ModelConfig;

/// A device as `llama-server --list-devices` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDevice {
    pub name: String,
    pub description: String,
    pub total: u64,
    pub free: u64,
}

impl ListedDevice {
    /// The device the estimate plans on.
    pub fn device(&self) -> Device {
        Device::listed(&self.name, &self.description, self.free)
    }
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
    list_devices_with_env(server, &BTreeMap::new())
}

/// [`list_devices`] with a model's `env:` added (`HIP_VISIBLE_DEVICES`,
/// `GGML_VK_VISIBLE_DEVICES` change what llama-server sees).
pub fn list_devices_with_env(server: &Path, env: &BTreeMap<String, String>) -> Vec<ListedDevice> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(server);
    cmd.arg("--list-devices")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    #[allow(unsafe_code)]
    // SAFETY: `pre_exec` runs in the forked child before exec; it makes one
    // raw syscall (prctl) and touches no locks or shared memory. The child
    // dies with the thread that waits for it (here, or the daemon's
    // estimate thread), so a program that hangs on `--list-devices` never
    // outlives the daemon.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let Ok(mut child) = cmd.spawn() else {
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

/// The estimate of one model on these GPUs, with these per-backend
/// overheads (the spec's, else [`Overheads::default`]).
pub fn model_estimate(
    m: &ModelConfig,
    gpus: &[Device],
    overheads: &Overheads,
) -> Result<Estimate, String> {
    let checked = crate::gguf::check_model(&m.model).map_err(|e| e.to_string())?;
    estimate_model(&checked.header, &m.launch, gpus, overheads)
}

/// A model's estimate as the running daemon shows it beside the measured
/// usage: made once per published spec, off the caller's thread (it reads
/// the model's header and asks its llama-server for the devices, which a
/// hung program would hold for 15 s), so `GET /status` never waits on it.
#[derive(Clone, Debug)]
pub struct Planned {
    state: std::sync::Arc<std::sync::Mutex<Option<Result<Estimate, String>>>>,
}

impl Planned {
    /// Starts the estimate of `m` as `server` will run it. The device list
    /// is asked once per program and environment for the daemon's life.
    pub fn start(m: &ModelConfig, server: &Path, overheads: Overheads) -> Planned {
        let planned = Planned {
            state: Default::default(),
        };
        let state = planned.state.clone();
        let (m, server) = (m.clone(), server.to_owned());
        let spawned = std::thread::Builder::new()
            .name("memory-estimate".into())
            .spawn(move || {
                let gpus: Vec<Device> = cached_devices(&server, &m.launch.env)
                    .iter()
                    .map(ListedDevice::device)
                    .collect();
                let e = model_estimate(&m, &gpus, &overheads);
                *state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            });
        if let Err(e) = spawned {
            *planned
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Err(format!("cannot start the estimate: {e}")));
        }
        planned
    }

    /// A finished estimate (computed here, for tests and callers that have
    /// one already).
    pub fn ready(e: Result<Estimate, String>) -> Planned {
        Planned {
            state: std::sync::Arc::new(std::sync::Mutex::new(Some(e))),
        }
    }

    /// The estimate, its error, or `None` while it is being made.
    pub fn get(&self) -> Option<Result<Estimate, String>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

type DeviceCache = BTreeMap<
    (std::path::PathBuf, BTreeMap<String, String>),
    std::sync::Arc<std::sync::OnceLock<Vec<ListedDevice>>>,
>;

/// `list_devices_with_env`, once per program and environment.
fn cached_devices(server: &Path, env: &BTreeMap<String, String>) -> Vec<ListedDevice> {
    static CACHE: std::sync::Mutex<DeviceCache> = std::sync::Mutex::new(BTreeMap::new());
    let cell = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry((server.to_owned(), env.clone()))
        .or_default()
        .clone();
    cell.get_or_init(|| list_devices_with_env(server, env))
        .clone()
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
