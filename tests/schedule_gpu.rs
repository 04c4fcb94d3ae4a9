//! The memory scheduler against a GPU device (docs/scheduler.md): the real
//! daemon, llama.cpp's Vulkan build on Mesa's lavapipe (listed as `Vulkan0`
//! with `GGML_VK_VISIBLE_DEVICES=0`) and tiny models, with `memory.vram`
//! counted against `Vulkan0`.
//!
//! No AMD GPU is here, so the daemon's probes read a copy of the fixture
//! sysfs tree (tests/fixtures/probes, `serve --sys-root`), whose `card0` is
//! where the daemon looks for `Vulkan0`'s freed memory
//! (`freed::driver_device`); the test plays the driver by writing card0's
//! `mem_info_vram_used`.
//!
//! The Vulkan build comes from ROCM_LLM_LLAMA_SERVER_VULKAN, else from
//! `scripts/llama-server.sh --backend vulkan --check`; without one the
//! tests say SKIPPED, and under CI=true fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::daemon::{Daemon, pretty, write_by_rename};
use rocm_llm::daemon::status::StatusReport;
use rocm_llm::memory::human_bytes;

const MIB: u64 = 1 << 20;
const GPU: &str = "Vulkan0";

/// What lavapipe needs to be listed (llama.cpp skips CPU-type Vulkan
/// devices unless asked for them by number).
const LAVAPIPE: (&str, &str) = ("GGML_VK_VISIBLE_DEVICES", "0");

fn vulkan_server() -> Option<PathBuf> {
    let server = common::backend_server("vulkan");
    if server.is_none() {
        common::skip("no Vulkan llama-server (scripts/llama-server.sh --backend vulkan)");
    }
    server
}

/// A private copy of the fixture sysfs tree, whose card0 the test changes.
struct Card0 {
    dir: tempfile::TempDir,
}

impl Card0 {
    fn new() -> Card0 {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probes/sys");
        let ok = std::process::Command::new("cp")
            .arg("-R")
            .arg(&src)
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -R {}", src.display());
        Card0 { dir }
    }

    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn used_file(&self) -> PathBuf {
        self.sys().join("class/drm/card0/device/mem_info_vram_used")
    }

    fn used(&self) -> u64 {
        std::fs::read_to_string(self.used_file())
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Sets `mem_info_vram_used` atomically (as sysfs changes); the time is
    /// taken before the new figure can be read.
    fn set_used(&self, bytes: u64) -> SystemTime {
        let path = self.used_file();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, bytes.to_string()).unwrap();
        let at = SystemTime::now();
        std::fs::rename(&tmp, &path).unwrap();
        at
    }
}

/// The daemon on the Vulkan build, its probes under `sys`, with no models
/// yet (each test writes its spec).
fn start(server: PathBuf, sys: &Path) -> Daemon {
    Daemon::start_on(
        server,
        &["a", "b"],
        "",
        &[(LAVAPIPE.0, OsStr::new(LAVAPIPE.1))],
        &[OsStr::new("--sys-root"), sys.as_os_str()],
    )
}

/// The spec with a `memory:` block (`memory`: its lines, indented by two)
/// and `models`.
fn spec_with_memory(d: &Daemon, memory: &str, models: &str) -> String {
    d.spec_text(models)
        .replace("models:\n", &format!("memory:\n{memory}models:\n"))
}

/// Models `a` and `b`, each with the lines `extra` (indented by four).
fn models_ab(extra: &str) -> String {
    ["a", "b"]
        .iter()
        .map(|m| format!("  {m}:\n    model: {m}.gguf\n{extra}"))
        .collect()
}

/// Sends a chat completion and reads the whole answer: its status line.
fn chat(d: &Daemon, model: &str) -> String {
    let mut c = d.send_chat(model);
    // A failing test must not hang on a request the daemon still holds.
    c.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_owned()
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn vulkan0(s: &StatusReport) -> rocm_llm::schedule::arbiter::DeviceBudget {
    s.scheduler
        .devices
        .iter()
        .find(|b| b.device == GPU)
        .cloned()
        .unwrap_or_else(|| panic!("no {GPU} budget: {}", pretty(s)))
}

/// The launches of `model` so far.
fn launches(s: &StatusReport, model: &str) -> Vec<rocm_llm::supervisor::LaunchRecord> {
    s.models
        .get(model)
        .map(|m| m.launches.clone())
        .unwrap_or_default()
}

/// Two on-demand models of a declared 66 MiB each (counted on Vulkan0) in a
/// 100 MiB vram budget, with `free_wait`; `a` has served one request and
/// card0 shows its buffers as used. Returns card0's used memory before `a`.
fn a_loaded_on_card0(free_wait: &str) -> Option<(Daemon, Card0, u64)> {
    let server = vulkan_server()?;
    let card0 = Card0::new();
    let d = start(server, &card0.sys());
    write_by_rename(
        &d.spec,
        &spec_with_memory(
            &d,
            &format!("  vram: {{ total: 100MiB, reserve: 0B }}\n  free_wait: {free_wait}\n"),
            &models_ab("    on_demand: true\n    memory: 66MiB\n"),
        ),
    );
    d.wait_status("the vram budget applied", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == GPU && b.budget_bytes == 100 * MIB)
            && s.models.len() == 2
    });
    let before = card0.used();
    let line = chat(&d, "a");
    assert!(line.contains(" 200 "), "a: {line}\n{}", d.log());
    let s = d.status();
    let a = &s.scheduler.models["a"];
    assert_eq!(
        a.reserved.get(GPU),
        Some(&(66 * MIB)),
        "the declared footprint is a's reservation on {GPU}: {}",
        pretty(&s)
    );
    let measured = *a
        .measured
        .get(GPU)
        .unwrap_or_else(|| panic!("a measured nothing on {GPU}: {}", pretty(&s)));
    // The driver: a's buffers are in card0's used memory while it runs.
    card0.set_used(before + measured);
    eprintln!(
        "a on {GPU}: declared 66 MiB, measured {:.2} MiB; card0 used {before} -> {}",
        measured as f64 / MIB as f64,
        before + measured
    );
    Some((d, card0, before))
}

/// Waits until `a` was stopped for `b` and its process reaped; returns
/// when it exited (the daemon's clock, seconds since the epoch).
fn a_evicted_and_reaped(d: &Daemon) -> f64 {
    let s = d.wait_status("a evicted for b and reaped", |s| {
        launches(s, "a")
            .last()
            .is_some_and(|l| l.exited_at.is_some())
    });
    assert_eq!(s.scheduler.counters.evictions, 1, "{}", pretty(&s));
    launches(&s, "a").last().unwrap().exited_at.unwrap()
}

#[test]
fn a_device_that_frees_its_vram_late_holds_the_next_load_until_it_does() {
    let Some((d, card0, before)) = a_loaded_on_card0("60s") else {
        return;
    };
    std::thread::scope(|scope| {
        let b = scope.spawn(|| chat(&d, "b"));
        let exited = a_evicted_and_reaped(&d);
        // The driver returns a's VRAM late: for this long after the exit
        // card0 still shows it used, and b must not start meanwhile (the
        // lag is what is under test; the samples are the check).
        let lag = Duration::from_secs(3);
        let until = Instant::now() + lag;
        let mut samples = 0;
        while Instant::now() < until {
            let s = d.status();
            assert!(
                launches(&s, "b").is_empty(),
                "b started before card0's memory dropped: {}",
                pretty(&s)
            );
            let waits_for = s
                .scheduler
                .models
                .get("b")
                .and_then(|h| h.waiting_for.clone());
            assert!(
                waits_for
                    .as_ref()
                    .is_some_and(|w| w.iter().any(|m| m == "a")),
                "b waits for a's memory: {}",
                pretty(&s)
            );
            let gpu = vulkan0(&s);
            assert!(gpu.reserved_bytes <= gpu.budget_bytes, "{}", pretty(&s));
            samples += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let dropped_at = card0.set_used(before);
        let line = b.join().unwrap();
        assert!(line.contains(" 200 "), "b: {line}\n{}", d.log());
        let s = d.status();
        let spawned = launches(&s, "b")
            .first()
            .map(|l| l.spawned_at)
            .unwrap_or_else(|| panic!("b has no launch: {}", pretty(&s)));
        assert!(
            spawned >= epoch_secs(dropped_at),
            "b spawned at {spawned}, before card0's drop at {}\n{}",
            epoch_secs(dropped_at),
            d.log()
        );
        let c = s.scheduler.counters;
        assert_eq!(c.free_timeouts, 0, "{c:?}\n{}", d.log());
        assert_eq!((c.evictions, c.swaps, c.refused), (1, 1, 0), "{c:?}");
        assert!(
            !d.log().contains("releasing its reservation anyway"),
            "{}",
            d.log()
        );
        eprintln!(
            "a exited at {exited:.3}, card0 dropped {:.3} s later ({samples} samples with b waiting), b spawned {:.3} s after the drop",
            epoch_secs(dropped_at) - exited,
            spawned - epoch_secs(dropped_at)
        );
    });
}

#[test]
fn a_device_that_never_frees_its_vram_releases_the_reservation_after_free_wait() {
    let Some((d, card0, before)) = a_loaded_on_card0("3s") else {
        return;
    };
    let bound = 3.0;
    let line = std::thread::scope(|scope| {
        let b = scope.spawn(|| chat(&d, "b"));
        a_evicted_and_reaped(&d);
        b.join().unwrap()
    });
    assert!(line.contains(" 200 "), "b: {line}\n{}", d.log());
    let s = d.status();
    let exited = launches(&s, "a").last().unwrap().exited_at.unwrap();
    let spawned = launches(&s, "b").first().unwrap().spawned_at;
    assert!(
        spawned - exited >= bound,
        "b spawned {:.3} s after a exited, before the {bound} s free_wait\n{}",
        spawned - exited,
        d.log()
    );
    assert_ne!(card0.used(), before, "the fixture never dropped");
    let c = s.scheduler.counters;
    assert_eq!(c.free_timeouts, 1, "{c:?}");
    assert_eq!((c.evictions, c.swaps), (1, 1), "{c:?}");
    let log = d.log();
    assert!(
        log.contains("its memory was not seen free within 3s; releasing its reservation anyway")
            && log.contains("model=a"),
        "{log}"
    );
    assert_eq!(metric(&d, "rocm_llm_scheduler_free_wait_timeouts_total"), 1);
    eprintln!(
        "b spawned {:.3} s after a exited (free_wait {bound} s)",
        spawned - exited
    );
}

/// A counter without labels from `/metrics`.
fn metric(d: &Daemon, name: &str) -> u64 {
    let text = common::daemon::get(&d.control, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `rocm-llm plan --json` on `spec`: each model's estimate per device.
fn planned(spec: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .arg("plan")
        .arg("--json")
        .arg(spec)
        .env(LAVAPIPE.0, LAVAPIPE.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = plan["fit"]["models"].as_object().expect("fit.models");
    models
        .iter()
        .map(|(m, v)| {
            assert_eq!(v["source"], "estimate", "{m}: {v}");
            let devices = v["devices"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(d, b)| (d.clone(), b.as_u64().unwrap()))
                .collect();
            (m.clone(), devices)
        })
        .collect()
}

#[test]
fn the_vram_budget_holds_on_vulkan0_at_admission_and_at_run_time() {
    let Some(server) = vulkan_server() else {
        return;
    };
    // No card here: Vulkan0 has no driver reading, so freed memory is not
    // waited for (the host's own sysfs must not decide this test).
    let empty = tempfile::tempdir().unwrap();
    let d = start(server, empty.path());
    let on_demand = models_ab("    on_demand: true\n");

    // The estimates, under a budget that holds anything.
    write_by_rename(
        &d.spec,
        &spec_with_memory(&d, "  vram: { total: 1GiB, reserve: 0B }\n", &on_demand),
    );
    let estimate = planned(&d.spec);
    let (est_a, est_b) = (estimate["a"][GPU], estimate["b"][GPU]);
    assert!(
        est_a > 0 && est_b > 0,
        "nothing estimated on {GPU}: {estimate:?}"
    );
    // Each fits alone, both do not.
    let budget = est_a.max(est_b) * 3 / 2;
    assert!(est_a + est_b > budget);
    let vram = format!("  vram: {{ total: {budget}B, reserve: 0B }}\n");
    write_by_rename(&d.spec, &spec_with_memory(&d, &vram, &on_demand));
    let applied = d.wait_status("the vram budget applied", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == GPU && b.budget_bytes == budget)
            && s.models.len() == 2
    });

    // Admission at reload: both always-on do not fit on Vulkan0.
    write_by_rename(
        &d.spec,
        &spec_with_memory(&d, &vram, &models_ab("    on_demand: false\n")),
    );
    let s = d.wait_status("the always-on edit rejected", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| !r.ok)
    });
    let errors = &s.daemon.last_reload.as_ref().unwrap().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str();
    for want in [
        format!("the always-on models do not fit together on {GPU}: "),
        format!("a {} + b {} = ", human_bytes(est_a), human_bytes(est_b)),
        format!("short by {} on {GPU}", human_bytes(est_a + est_b - budget)),
    ] {
        assert!(e.contains(&want), "{want:?} not in {e}");
    }
    assert_eq!(
        s.daemon.generation, applied.daemon.generation,
        "nothing applied"
    );
    assert!(
        s.models.values().all(|m| m.on_demand && m.pid.is_none()),
        "the models stayed on demand and stopped: {}",
        pretty(&s)
    );
    assert!(
        d.children().is_empty(),
        "nothing started: {:?}",
        d.children()
    );
    write_by_rename(&d.spec, &spec_with_memory(&d, &vram, &on_demand));
    d.wait_status("the on-demand spec back", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| r.ok)
    });

    // Run time: requests alternate between the two; each must evict the
    // other, idle one. The ledger and the processes are sampled meanwhile.
    let rounds = 3;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answers, samples) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let answers: Vec<(String, String)> = (0..rounds)
                .flat_map(|_| ["a", "b"])
                .map(|m| (m.to_owned(), chat(&d, m)))
                .collect();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            answers
        });
        let (mut samples, mut most_running) = (Vec::new(), 0);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let s = d.status();
            let running = d.children();
            let gpu = vulkan0(&s);
            assert!(
                gpu.reserved_bytes <= gpu.budget_bytes,
                "{GPU} reserved {} over its budget {}: {}",
                gpu.reserved_bytes,
                gpu.budget_bytes,
                pretty(&s)
            );
            assert!(
                running.len() <= 1,
                "{} llama-servers at once, and two do not fit: {}",
                running.len(),
                pretty(&s)
            );
            most_running = most_running.max(running.len());
            samples.push(s);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(most_running, 1, "the samples saw a llama-server running");
        (client.join().unwrap(), samples)
    });
    for (m, line) in &answers {
        assert!(line.contains(" 200 "), "{m}: {line}\n{}", d.log());
    }
    let s = d.status();
    let c = s.scheduler.counters;
    let switches = 2 * rounds - 1;
    assert_eq!(c.evictions, switches, "{c:?}");
    assert_eq!(c.swaps, switches, "{c:?}");
    assert_eq!((c.refused, c.free_timeouts, c.yields), (0, 0, 0), "{c:?}");

    // After a load the measured figure (llama-server's buffers plus the
    // Vulkan overhead) is the reservation; before its first load a model
    // reserves the estimate, and later loads what was measured.
    let b = &s.models["b"];
    let overhead = b
        .memory
        .estimate
        .as_ref()
        .expect("b's estimate")
        .estimate
        .devices[GPU]
        .overhead;
    let from_log = b.memory.log_devices[GPU].total() + overhead;
    let held = &s.scheduler.models["b"];
    assert_eq!(held.phases, ["loaded"], "{}", pretty(&s));
    assert_eq!(held.reserved.get(GPU), Some(&from_log), "{}", pretty(&s));
    assert_eq!(held.measured.get(GPU), Some(&from_log), "{}", pretty(&s));
    assert_ne!(from_log, est_b, "the measured figure equals the estimate");
    assert_eq!(vulkan0(&s).reserved_bytes, from_log, "{}", pretty(&s));
    let remembered: BTreeMap<String, BTreeMap<String, u64>> = serde_json::from_str(
        &std::fs::read_to_string(d.dir.path().join("state/measured.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        remembered[&b.launch_id].get(GPU),
        Some(&from_log),
        "{remembered:?}"
    );
    let loading: Vec<(String, u64)> = samples
        .iter()
        .flat_map(|s| {
            s.scheduler
                .models
                .iter()
                .filter(|(_, h)| h.phases == ["loading"])
                .map(|(m, h)| (m.clone(), h.reserved.get(GPU).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
        })
        .collect();
    let measured_of = |m: &str| remembered[&s.models[m].launch_id][GPU];
    for (m, reserved) in &loading {
        let est = estimate[m.as_str()][GPU];
        assert!(
            *reserved == est || *reserved == measured_of(m),
            "{m} loading with {reserved} reserved on {GPU}: neither the estimate {est} nor the measured {}",
            measured_of(m)
        );
    }
    // Each load takes hundreds of milliseconds against samples every 20:
    // the first loads (estimate) and the later ones (measured) are seen.
    for (m, what, bytes) in [
        ("a", "the estimate", est_a),
        ("a", "the measured figure", measured_of("a")),
        ("b", "the estimate", est_b),
        ("b", "the measured figure", measured_of("b")),
    ] {
        assert!(
            loading.contains(&(m.to_owned(), bytes)),
            "no sample saw {m} load with {what} ({bytes}) reserved: {loading:?}"
        );
    }
    let most = samples
        .iter()
        .map(|s| vulkan0(s).reserved_bytes)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{GPU}: estimate a {est_a} / b {est_b} B, budget {budget} B, measured b {from_log} B (log {} + overhead {overhead}); {} samples, most reserved {most} B, {} of them loading; counters {c:?}",
        b.memory.log_devices[GPU].total(),
        samples.len(),
        loading.len()
    );
}
