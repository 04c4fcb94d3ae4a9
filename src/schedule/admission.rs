//! Admission: does the spec fit the memory budget? Run by `validate`,
//! `plan` and every reload (through [`crate::spec::validate::load`]).
//!
//! - The always-on models (enabled, not `on_demand`) must fit together in
//!   each device's budget (total minus reserve).
//! - Each on-demand model must fit beside them, alone: two on-demand models
//!   that do not fit together take turns at run time, by the policy in
//!   [`super::policy`] as the daemon's arbiter applies it
//!   ([`super::arbiter`], docs/scheduler.md).
//!
//! [`admit`] is the pure rule over budgets and footprints; [`check`] builds
//! those from the validated spec, the detected machine and the estimate.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::HOST;
use super::detect::Machine;
use crate::memory::{Device, Estimate, human_bytes};
use crate::spec::{Desired, GpuLayers, ModelConfig};

/// How admission gets a model's estimate on some GPUs (the spec's
/// [`crate::spec::validate::FileProbe::estimate`]).
pub type EstimateFn<'a> = dyn Fn(&ModelConfig, &[Device]) -> Result<Estimate, String> + 'a;

/// What one device may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// llama.cpp's name: `CPU` (the host, `ram`), `ROCm0`, `Vulkan0`, ...
    pub device: String,
    pub total: u64,
    pub reserve: u64,
    /// Where `total` comes from: `spec` or what detected it.
    pub source: String,
}

impl Budget {
    /// Total minus reserve.
    pub fn available(&self) -> u64 {
        self.total.saturating_sub(self.reserve)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} total - {} reserve)",
            human_bytes(self.available()),
            human_bytes(self.total),
            human_bytes(self.reserve)
        )
    }
}

/// What one model takes, per device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub model: String,
    pub always_on: bool,
    pub priority: i32,
    /// Bytes per device.
    pub devices: BTreeMap<String, u64>,
    /// `estimate` or `declared` (the model's `memory`).
    pub source: &'static str,
}

impl Footprint {
    pub fn on(&self, device: &str) -> u64 {
        self.devices.get(device).copied().unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortKind {
    /// The always-on models together.
    AlwaysOn,
    /// One on-demand model beside the always-on ones.
    OnDemand,
}

/// A device that cannot hold what the spec asks of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// The model whose key carries the error.
    pub model: String,
    pub kind: ShortKind,
    pub device: String,
    /// The models counted, with their bytes on the device.
    pub members: Vec<(String, u64)>,
    pub budget: Budget,
    /// How much is missing.
    pub short: u64,
}

impl Shortfall {
    pub fn needed(&self) -> u64 {
        self.members.iter().map(|(_, b)| b).sum()
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sum = self
            .members
            .iter()
            .map(|(m, b)| format!("{m} {}", human_bytes(*b)))
            .collect::<Vec<_>>()
            .join(" + ");
        let what = match self.kind {
            ShortKind::AlwaysOn => {
                format!(
                    "the always-on models do not fit together on {}",
                    self.device
                )
            }
            ShortKind::OnDemand if self.members.len() == 1 => format!(
                "on-demand model {} does not fit on {} even alone",
                self.model, self.device
            ),
            ShortKind::OnDemand => format!(
                "on-demand model {} does not fit beside the always-on models on {}",
                self.model, self.device
            ),
        };
        let hint = match self.kind {
            ShortKind::AlwaysOn => {
                "make one `on_demand: true`, shrink its ctx_size or gpu_layers, or raise the budget"
            }
            ShortKind::OnDemand => {
                "shrink its ctx_size or gpu_layers, make an always-on model on_demand, or raise the budget"
            }
        };
        write!(
            f,
            "{what}: {sum} = {} against a budget of {}: short by {} on {} ({hint})",
            human_bytes(self.needed()),
            self.budget,
            human_bytes(self.short),
            self.device
        )
    }
}

/// Everything admission found, for `validate` and `plan` to show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    pub machine: Machine,
    /// Per device, in name order (`CPU` first when known).
    pub budgets: Vec<Budget>,
    /// Enabled models with a footprint.
    pub footprints: Vec<Footprint>,
    /// Enabled models left out, with the reason (no estimate).
    pub unchecked: Vec<(String, String)>,
    /// What the reader should know (undetected memory, a GPU the build
    /// cannot use).
    pub notes: Vec<String>,
    pub shortfalls: Vec<Shortfall>,
}

impl Fit {
    /// The always-on models' sum on a device.
    pub fn always_on(&self, device: &str) -> u64 {
        self.footprints
            .iter()
            .filter(|f| f.always_on)
            .map(|f| f.on(device))
            .sum()
    }
}

/// The rule: which devices cannot hold the always-on set, or an on-demand
/// model beside it. Devices without a budget are not checked. An on-demand
/// model is not checked on a device where the always-on set already fails
/// (that error says it).
pub fn admit(budgets: &[Budget], footprints: &[Footprint]) -> Vec<Shortfall> {
    let mut out = Vec::new();
    for budget in budgets {
        let dev = budget.device.as_str();
        let always: Vec<&Footprint> = footprints
            .iter()
            .filter(|f| f.always_on && f.on(dev) > 0)
            .collect();
        let base: u64 = always.iter().map(|f| f.on(dev)).sum();
        if base > budget.available() {
            // At the key of the biggest: the likeliest one to change.
            let biggest = always
                .iter()
                .max_by_key(|f| (f.on(dev), std::cmp::Reverse(f.model.clone())))
                .map(|f| f.model.clone())
                .unwrap_or_default();
            out.push(Shortfall {
                model: biggest,
                kind: ShortKind::AlwaysOn,
                device: budget.device.clone(),
                members: always
                    .iter()
                    .map(|f| (f.model.clone(), f.on(dev)))
                    .collect(),
                budget: budget.clone(),
                short: base - budget.available(),
            });
            continue;
        }
        for f in footprints.iter().filter(|f| !f.always_on && f.on(dev) > 0) {
            let need = base.saturating_add(f.on(dev));
            if need > budget.available() {
                let mut members: Vec<(String, u64)> = always
                    .iter()
                    .map(|a| (a.model.clone(), a.on(dev)))
                    .collect();
                members.push((f.model.clone(), f.on(dev)));
                out.push(Shortfall {
                    model: f.model.clone(),
                    kind: ShortKind::OnDemand,
                    device: budget.device.clone(),
                    members,
                    budget: budget.clone(),
                    short: need - budget.available(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.model, &a.device).cmp(&(&b.model, &b.device)));
    out
}

/// One budget per GPU llama-server lists (`vram`) and one for the host
/// (`ram`), where the total is declared or detected.
pub fn budgets(desired: &Desired, machine: &Machine, notes: &mut Vec<String>) -> Vec<Budget> {
    let mem = &desired.memory;
    let mut out = Vec::new();
    match (mem.ram.total, machine.ram_total) {
        (Some(total), _) => out.push(Budget {
            device: HOST.into(),
            total,
            reserve: mem.ram.reserve,
            source: "spec".into(),
        }),
        (None, Some(total)) => out.push(Budget {
            device: HOST.into(),
            total,
            reserve: mem.ram.reserve,
            source: "detected (MemTotal)".into(),
        }),
        (None, None) => notes.push(
            "ram: total is auto and the host's memory could not be read: host memory is not checked".into(),
        ),
    }
    for gpu in &machine.gpus {
        let (total, source) = match mem.vram.total {
            Some(t) => (t, "spec".to_owned()),
            None => (
                gpu.total,
                "detected (llama-server --list-devices)".to_owned(),
            ),
        };
        out.push(Budget {
            device: gpu.name.clone(),
            total,
            reserve: mem.vram.reserve,
            source,
        });
    }
    if machine.gpus.is_empty() {
        if let Some(t) = mem.vram.total {
            notes.push(format!(
                "vram: total is {} but llama-server lists no GPU: every model runs on the host and counts against ram",
                human_bytes(t)
            ));
        }
        if !machine.drivers.is_empty() {
            let found: Vec<String> = machine
                .drivers
                .iter()
                .map(|d| format!("{} ({})", d.name, human_bytes(d.total)))
                .collect();
            notes.push(format!(
                "the drivers report {} but this llama-server lists no GPU (a CPU build?): every model is planned on the host",
                found.join(", ")
            ));
        }
    }
    out
}

/// Where a declared footprint counts: all of it on the model's first GPU
/// when it offloads (the main GPU holds most of it), else on the host.
fn declared_device(m: &ModelConfig, machine: &Machine) -> String {
    match (machine.gpus.first(), m.launch.gpu_layers) {
        (Some(_), Some(GpuLayers::Count(0))) | (None, _) => HOST.into(),
        (Some(gpu), _) => gpu.name.clone(),
    }
}

/// The footprint of one enabled model: declared, or estimated with the
/// spec's overheads in place of the built-in ones.
pub fn footprint(
    desired: &Desired,
    m: &ModelConfig,
    machine: &Machine,
    estimate: &EstimateFn<'_>,
) -> Result<Footprint, String> {
    let (devices, source) = match m.lifecycle.footprint {
        Some(bytes) => (
            BTreeMap::from([(declared_device(m, machine), bytes)]),
            "declared",
        ),
        None => {
            let gpus: Vec<Device> = machine
                .gpus
                .iter()
                .map(|g| Device::new(&g.name, g.free))
                .collect();
            let e = estimate(m, &gpus)?;
            let devices = e
                .devices
                .iter()
                .map(|(d, p)| {
                    let mut p = *p;
                    if let Some(o) = desired.memory.overheads.for_device(d) {
                        p.overhead = o;
                    }
                    (d.clone(), p.total())
                })
                .filter(|(_, b)| *b > 0)
                .collect();
            (devices, "estimate")
        }
    };
    Ok(Footprint {
        model: m.name.clone(),
        always_on: !m.lifecycle.on_demand,
        priority: m.lifecycle.priority,
        devices,
        source,
    })
}

/// Admission over a validated spec on a detected machine.
pub fn check(desired: &Desired, machine: &Machine, estimate: &EstimateFn<'_>) -> Fit {
    let mut fit = Fit {
        machine: machine.clone(),
        ..Fit::default()
    };
    fit.budgets = budgets(desired, machine, &mut fit.notes);
    for m in desired.enabled_models() {
        match footprint(desired, m, machine, estimate) {
            Ok(f) => fit.footprints.push(f),
            Err(e) => fit.unchecked.push((m.name.clone(), e)),
        }
    }
    fit.shortfalls = admit(&fit.budgets, &fit.footprints);
    fit
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn budget(device: &str, total: u64, reserve: u64) -> Budget {
        Budget {
            device: device.into(),
            total,
            reserve,
            source: "spec".into(),
        }
    }

    fn model(name: &str, always_on: bool, devices: &[(&str, u64)]) -> Footprint {
        Footprint {
            model: name.into(),
            always_on,
            priority: 0,
            devices: devices.iter().map(|(d, b)| ((*d).to_owned(), *b)).collect(),
            source: "declared",
        }
    }

    /// One case: budgets, models, and the shortfalls as text.
    fn check_case(budgets: &[Budget], models: &[Footprint], want: &[&str]) {
        let found: Vec<String> = admit(budgets, models)
            .iter()
            .map(|s| format!("{}: {s}", s.model))
            .collect();
        assert_eq!(found, want, "budgets {budgets:?} models {models:?}");
    }

    #[test]
    fn admission_table() {
        let rocm = budget("ROCm0", 16 * GIB, GIB);
        let ram = budget("CPU", 8 * GIB, 2 * GIB);
        let on = |n, d: &[(&str, u64)]| model(n, true, d);
        let od = |n, d: &[(&str, u64)]| model(n, false, d);
        // Fits: 6 + 8 on 15 available.
        check_case(
            std::slice::from_ref(&rocm),
            &[
                on("a", &[("ROCm0", 6 * GIB)]),
                od("b", &[("ROCm0", 8 * GIB)]),
            ],
            &[],
        );
        // Exactly the budget fits.
        check_case(
            std::slice::from_ref(&rocm),
            &[on("a", &[("ROCm0", 15 * GIB)])],
            &[],
        );
        // The always-on set over by 1 GiB: at the biggest's key.
        check_case(
            std::slice::from_ref(&rocm),
            &[
                on("a", &[("ROCm0", 6 * GIB)]),
                on("b", &[("ROCm0", 10 * GIB)]),
            ],
            &[
                "b: the always-on models do not fit together on ROCm0: a 6.00 GiB + b 10.00 GiB = 16.00 GiB against a budget of 15.00 GiB (16.00 GiB total - 1.00 GiB reserve): short by 1.00 GiB on ROCm0 (make one `on_demand: true`, shrink its ctx_size or gpu_layers, or raise the budget)",
            ],
        );
        // An on-demand model beside them, short by 1.7 GiB.
        check_case(
            std::slice::from_ref(&rocm),
            &[
                on("qwen", &[("ROCm0", 6 * GIB)]),
                od("llama", &[("ROCm0", 10 * GIB + 717 * MIB)]),
            ],
            &[
                "llama: on-demand model llama does not fit beside the always-on models on ROCm0: qwen 6.00 GiB + llama 10.70 GiB = 16.70 GiB against a budget of 15.00 GiB (16.00 GiB total - 1.00 GiB reserve): short by 1.70 GiB on ROCm0 (shrink its ctx_size or gpu_layers, make an always-on model on_demand, or raise the budget)",
            ],
        );
        // Two on-demand models each fit beside, not together: admitted
        // (they take turns at run time).
        check_case(
            std::slice::from_ref(&rocm),
            &[
                on("a", &[("ROCm0", 5 * GIB)]),
                od("b", &[("ROCm0", 9 * GIB)]),
                od("c", &[("ROCm0", 9 * GIB)]),
            ],
            &[],
        );
        // Too big even alone.
        check_case(
            std::slice::from_ref(&rocm),
            &[od("huge", &[("ROCm0", 20 * GIB)])],
            &[
                "huge: on-demand model huge does not fit on ROCm0 even alone: huge 20.00 GiB = 20.00 GiB against a budget of 15.00 GiB (16.00 GiB total - 1.00 GiB reserve): short by 5.00 GiB on ROCm0 (shrink its ctx_size or gpu_layers, make an always-on model on_demand, or raise the budget)",
            ],
        );
        // Each device on its own: the host short, the GPU fine.
        let short: Vec<String> = admit(
            &[rocm.clone(), ram.clone()],
            &[on("a", &[("ROCm0", GIB), ("CPU", 7 * GIB)])],
        )
        .iter()
        .map(|s| format!("{} {} {}", s.model, s.device, s.short))
        .collect();
        assert_eq!(short, vec![format!("a CPU {GIB}")]);
        // A device without a budget is not checked.
        check_case(
            std::slice::from_ref(&ram),
            &[on("a", &[("Vulkan0", 100 * GIB)])],
            &[],
        );
        // Where the always-on set fails, the on-demand ones are not
        // reported again on that device.
        let models = [on("a", &[("ROCm0", 16 * GIB)]), od("b", &[("ROCm0", GIB)])];
        let found: Vec<String> = admit(&[rocm], &models)
            .iter()
            .map(|s| s.model.clone())
            .collect();
        assert_eq!(found, vec!["a"]);
    }
}
