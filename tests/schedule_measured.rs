//! The measured figures remembered by launch identity in the state
//! directory (`schedule::measured`): real files in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rocm_llm::schedule::ledger::Bytes;
use rocm_llm::schedule::measured::Measured;

fn bytes(d: &[(&str, u64)]) -> Bytes {
    d.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn a_launch_remembers_what_it_measured_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let m = Measured::new(&state);
    assert_eq!(
        m.get("366fddcf4bd9c951"),
        None,
        "nothing before the first load"
    );
    m.record(
        "366fddcf4bd9c951",
        &bytes(&[("ROCm0", 7 << 30), ("CPU", 300 << 20)]),
    )
    .unwrap();
    m.record("aaaaaaaaaaaaaaaa", &bytes(&[("CPU", 1 << 30)]))
        .unwrap();
    // Another reader of the same directory (the next daemon) sees both.
    let again = Measured::new(&state);
    assert_eq!(
        again.get("366fddcf4bd9c951"),
        Some(bytes(&[("ROCm0", 7 << 30), ("CPU", 300 << 20)]))
    );
    // A new measurement replaces the old one.
    again
        .record("366fddcf4bd9c951", &bytes(&[("ROCm0", 6 << 30)]))
        .unwrap();
    assert_eq!(
        m.get("366fddcf4bd9c951"),
        Some(bytes(&[("ROCm0", 6 << 30)]))
    );
    // Launches no longer in the spec are forgotten.
    m.retain(&["aaaaaaaaaaaaaaaa"]).unwrap();
    assert_eq!(m.all().keys().collect::<Vec<_>>(), ["aaaaaaaaaaaaaaaa"]);
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["measured.json"]);
}

#[test]
fn a_corrupt_file_is_an_empty_memory_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let m = Measured::new(dir.path());
    std::fs::write(m.path(), b"{ not json").unwrap();
    assert!(m.all().is_empty());
    m.record("bbbbbbbbbbbbbbbb", &bytes(&[("CPU", 5)])).unwrap();
    assert_eq!(m.get("bbbbbbbbbbbbbbbb"), Some(bytes(&[("CPU", 5)])));
}
