//! Waiting until a stopped process's memory is seen free
//! (`schedule::freed`), against copies of the fixture sysfs tree
//! (tests/fixtures/probes/; no AMD GPU is here) whose figures change late.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rocm_llm::memory::probe::ProbeRoots;
use rocm_llm::schedule::freed::{FreedBy, Watch, check, used_now, wait_freed};

const GIB: u64 = 1 << 30;

/// A private copy of the fixture probe roots, so a test may change it.
fn fixture_copy() -> (tempfile::TempDir, ProbeRoots) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probes");
    let ok = std::process::Command::new("cp")
        .arg("-R")
        .arg(src.join("sys"))
        .arg(src.join("proc"))
        .arg(dir.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -R the fixture tree");
    let roots = ProbeRoots {
        sys: dir.path().join("sys"),
        proc: dir.path().join("proc"),
        nvidia_smi: PathBuf::from("/nonexistent/nvidia-smi"),
    };
    (dir, roots)
}

fn used_file(roots: &ProbeRoots) -> PathBuf {
    roots.sys.join("class/drm/card0/device/mem_info_vram_used")
}

/// Writes `text` to `path` after `delay`, atomically (as sysfs changes).
fn later(path: PathBuf, text: String, delay: Duration) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        // Taken before the new figure appears.
        let at = Instant::now();
        std::fs::rename(&tmp, &path).unwrap();
        at
    })
}

#[tokio::test]
async fn the_wait_ends_only_when_the_devices_used_memory_drops() {
    let (_dir, roots) = fixture_copy();
    let before = used_now(&roots, "card0").expect("the fixture card0 reads");
    assert_eq!(before, 9 * GIB);
    // The process held 6 GiB; AMD gives it back late.
    let w = Watch {
        pid: 4242,
        device: Some("card0".into()),
        used_at_stop: Some(before),
        held: 6 * GIB,
    };
    assert_eq!(check(&roots, &w), None, "not free while used is unchanged");
    let dropped = later(
        used_file(&roots),
        (3 * GIB + 100).to_string(),
        Duration::from_millis(300),
    );
    let by = wait_freed(
        &roots,
        &w,
        Duration::from_secs(60),
        Duration::from_millis(10),
    )
    .await;
    let seen = Instant::now();
    assert_eq!(by, FreedBy::DeviceUsedDropped);
    let dropped_at = dropped.join().unwrap();
    assert!(seen >= dropped_at, "the wait ended before the drop");
}

#[tokio::test]
async fn a_drop_smaller_than_what_the_process_held_is_not_enough() {
    let (_dir, roots) = fixture_copy();
    let w = Watch {
        pid: 4242,
        device: Some("card0".into()),
        used_at_stop: Some(9 * GIB),
        held: 6 * GIB,
    };
    // Down by 4 GiB of 6: more than an eighth is still missing.
    std::fs::write(used_file(&roots), (5 * GIB).to_string()).unwrap();
    assert_eq!(check(&roots, &w), None);
    // Within an eighth of the 6 GiB: seen free.
    std::fs::write(used_file(&roots), (3 * GIB + 700 * (1 << 20)).to_string()).unwrap();
    assert_eq!(check(&roots, &w), Some(FreedBy::DeviceUsedDropped));
}

#[tokio::test]
async fn the_wait_is_bounded() {
    let (_dir, roots) = fixture_copy();
    let w = Watch {
        pid: 4242,
        device: Some("card0".into()),
        used_at_stop: Some(9 * GIB),
        held: 6 * GIB,
    };
    let bound = Duration::from_millis(200);
    let start = Instant::now();
    let by = wait_freed(&roots, &w, bound, Duration::from_millis(10)).await;
    assert_eq!(by, FreedBy::TimedOut);
    assert!(start.elapsed() >= bound, "it gave up before the bound");
}

#[tokio::test]
async fn without_a_device_reading_the_kfd_entry_decides() {
    let (_dir, roots) = fixture_copy();
    let w = Watch {
        pid: 4242,
        device: None,
        used_at_stop: None,
        held: 6 * GIB,
    };
    assert_eq!(check(&roots, &w), None, "KFD still has the process");
    let kfd = roots.sys.join("class/kfd/kfd/proc/4242");
    let gone = {
        let kfd = kfd.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            // Taken before the removal begins: the waiter cannot see it
            // gone any earlier.
            let at = Instant::now();
            std::fs::remove_dir_all(&kfd).unwrap();
            at
        })
    };
    let by = wait_freed(
        &roots,
        &w,
        Duration::from_secs(60),
        Duration::from_millis(10),
    )
    .await;
    let seen = Instant::now();
    assert_eq!(by, FreedBy::KfdEntryGone);
    assert!(seen >= gone.join().unwrap());
    // A device named but unreadable falls back to KFD as well.
    let w = Watch {
        device: Some("card7".into()),
        used_at_stop: Some(9 * GIB),
        ..w
    };
    assert_eq!(check(&roots, &w), Some(FreedBy::KfdEntryGone));
}

#[tokio::test]
async fn nothing_to_watch_ends_at_once() {
    let empty = tempfile::tempdir().unwrap();
    let roots = ProbeRoots {
        sys: empty.path().join("sys"),
        proc: empty.path().join("proc"),
        nvidia_smi: PathBuf::from("/nonexistent/nvidia-smi"),
    };
    let w = Watch {
        pid: 1,
        device: Some("card0".into()),
        used_at_stop: Some(GIB),
        held: GIB,
    };
    let by = wait_freed(
        &roots,
        &w,
        Duration::from_secs(60),
        Duration::from_millis(10),
    )
    .await;
    assert_eq!(by, FreedBy::NothingToWatch);
}
